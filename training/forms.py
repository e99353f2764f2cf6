"""The reward-model launch form: turns browser fields into a run config (the service validates it)."""
from django import forms

from training.models import ModelArtifact


class RewardRunForm(forms.Form):
    base_artifact = forms.ModelChoiceField(
        queryset=ModelArtifact.objects.none(), required=False, empty_label="— a model directory instead —",
        help_text="A registered base or reward model of this project.",
    )
    base_model_path = forms.CharField(
        required=False, max_length=500, label="Model directory",
        help_text="Any local Hugging Face model directory on the workers, e.g. /models/MiniLM-L6.",
    )
    epochs = forms.FloatField(initial=1.0, min_value=0.01, max_value=1000)
    learning_rate = forms.FloatField(initial=5e-5, min_value=0.0, max_value=1.0)
    batch_size = forms.IntegerField(initial=8, min_value=1, max_value=4096, help_text="Prompts per step.")
    max_length = forms.IntegerField(initial=256, min_value=8, max_value=131072)
    eval_fraction = forms.FloatField(initial=0.1, min_value=0.0, max_value=0.9, help_text="Prompts held out.")
    use_lora = forms.BooleanField(required=False, label="LoRA")
    lora_r = forms.IntegerField(initial=8, min_value=1, max_value=1024, label="LoRA rank")
    rounds = forms.CharField(required=False, max_length=200, help_text="Round numbers, e.g. 1,2 (empty: all).")

    def __init__(self, *args, project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["base_artifact"].queryset = ModelArtifact.objects.filter(
            project=project, kind__in=[ModelArtifact.Kind.BASE, ModelArtifact.Kind.REWARD]
        ).order_by("-id")

    def clean_rounds(self) -> list[int] | None:
        raw = self.cleaned_data["rounds"].replace(" ", "")
        if not raw:
            return None
        try:
            return sorted({int(part) for part in raw.split(",") if part})
        except ValueError:
            raise forms.ValidationError("Give round numbers separated by commas, e.g. 1,2.") from None

    def clean(self) -> dict:
        data = super().clean()
        if not data.get("base_artifact") and not (data.get("base_model_path") or "").strip():
            raise forms.ValidationError("Choose a registered model or give a model directory.")
        return data

    def run_config(self) -> dict:
        data = self.cleaned_data
        config = {key: data[key] for key in ("epochs", "learning_rate", "batch_size", "max_length", "eval_fraction")}
        config["lora_r"] = data["lora_r"] if data["use_lora"] else 0
        if not data.get("base_artifact"):
            config["base_model"] = data["base_model_path"].strip()
        return config


class StartRoundForm(forms.Form):
    """"Start next round": a policy, and pasted/uploaded prompts or N drawn from the pool."""

    policy = forms.ModelChoiceField(queryset=ModelArtifact.objects.none(), help_text="The policy that generates.")
    prompts_text = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 4}), label="New prompts",
                                   help_text="One prompt per line (or JSONL lines {\"prompt\"|\"messages\"}).")
    prompts_file = forms.FileField(required=False, label="…or a JSONL file of prompts")
    sample = forms.IntegerField(required=False, min_value=1, max_value=10_000, label="…or sample N from the pool")
    temperature = forms.FloatField(initial=1.0, min_value=0.01, max_value=10.0)
    top_p = forms.FloatField(initial=1.0, min_value=0.01, max_value=1.0)
    max_new_tokens = forms.IntegerField(initial=64, min_value=1, max_value=8192)
    seed = forms.IntegerField(initial=0, min_value=0)
    health_override = forms.CharField(required=False, max_length=500, label="Override the health gate: why",
                                      help_text="Only for a policy that failed the health gate; recorded with your name.")

    def __init__(self, *args, project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = ModelArtifact.objects.filter(
            project=project, kind__in=[ModelArtifact.Kind.POLICY, ModelArtifact.Kind.BASE]).order_by("-id")

    def clean(self) -> dict:
        data = super().clean()
        given = [bool((data.get("prompts_text") or "").strip()), bool(data.get("prompts_file")), bool(data.get("sample"))]
        if sum(given) != 1:
            raise forms.ValidationError("Give exactly one prompt set: pasted prompts, a file, or N from the pool.")
        return data

    def prompt_lines(self) -> list[str | bytes] | None:
        """Lines of the pasted or uploaded prompts (plain lines become {"prompt": line}); None to sample."""
        import json

        if self.cleaned_data.get("prompts_file"):
            return list(self.cleaned_data["prompts_file"])
        text = self.cleaned_data.get("prompts_text") or ""
        if not text.strip():
            return None
        return [line if line.lstrip().startswith("{") else json.dumps({"prompt": line.strip()})
                for line in text.splitlines() if line.strip()]

    def sampling(self) -> dict:
        return {key: self.cleaned_data[key] for key in ("temperature", "top_p", "max_new_tokens", "seed")}


class PolicyRunForm(forms.Form):
    """Launch SFT, DPO, PPO or GRPO from a policy (and, for PPO/GRPO, a reward model)."""

    kind = forms.ChoiceField(choices=[("dpo", "DPO"), ("ppo", "PPO"), ("grpo", "GRPO"), ("sft", "SFT")])
    policy = forms.ModelChoiceField(queryset=ModelArtifact.objects.none(), help_text="Starting policy (or base).")
    reward_artifact = forms.ModelChoiceField(queryset=ModelArtifact.objects.none(), required=False,
                                             label="Reward model", help_text="PPO/GRPO.")
    rounds = forms.CharField(required=False, max_length=200,
                             help_text="DPO: rounds to train on (empty: all). SFT: rounds whose top-ranked responses join the demonstrations.")
    config = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}), initial="{}",
                             help_text='Trainer settings as JSON, e.g. {"beta": 0.1, "epochs": 2}.')

    def __init__(self, *args, project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        artifacts = ModelArtifact.objects.filter(project=project).order_by("-id")
        self.fields["policy"].queryset = artifacts.filter(kind__in=[ModelArtifact.Kind.POLICY, ModelArtifact.Kind.BASE])
        self.fields["reward_artifact"].queryset = artifacts.filter(kind=ModelArtifact.Kind.REWARD)

    clean_rounds = RewardRunForm.clean_rounds

    def clean_config(self) -> dict:
        import json

        raw = (self.cleaned_data.get("config") or "").strip() or "{}"
        try:
            value = json.loads(raw)
        except ValueError as error:
            raise forms.ValidationError(f"Not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Give a JSON object.")
        return value


class PolicyDataForm(forms.Form):
    file = forms.FileField(help_text='JSONL: {"prompt"|"messages", "response"} demonstrations and {"prompt"|"messages"} pool prompts.')
