"""The reward-model launch form: turns browser fields into a run config (the service validates it)."""
from django import forms
from django.conf import settings

from annotation.errors import InvalidInput
from annotation.hooks import hook_names
from annotation.limits import json_loads_bounded, upload_lines
from annotation.provenance import CHOICE_LABELS, DEFAULT_CHOICE, source_selection_parse
from training import selectors
from training.model_sources import model_roots, shared_model_dirs
from training.models import ModelArtifact

START_ROUND_SAMPLE = 8  # "Start next round" draws this many pool prompts by default (fewer when the pool is smaller)


class SourceChoiceForm(forms.Form):
    """Which ranking sources a run trains on: an explicit choice, human only by default."""

    sources = forms.ChoiceField(choices=list(CHOICE_LABELS.items()), initial=DEFAULT_CHOICE, required=False,
                                label="Training data sources",
                                help_text="Human only unless you choose: AI-labeler rankings and arena votes are "
                                          "left out by default.")
    include_arena = forms.BooleanField(required=False, label="Include arena votes")
    ai_weight = forms.FloatField(required=False, label="AI pair weight",
                                 help_text="Only for 'weighted': AI pairs count this much (0 < w ≤ 1, default 0.5).")

    def clean(self) -> dict:
        data = super().clean()
        try:
            data["selection"] = source_selection_parse(
                choice=data.get("sources"), include_arena=data.get("include_arena") or False,
                ai_weight=data.get("ai_weight"))
        except InvalidInput as exc:
            self.add_error(exc.location if exc.location in self.fields else None, exc.message)
        return data


class RewardRunForm(SourceChoiceForm):
    base_artifact = forms.ModelChoiceField(
        queryset=ModelArtifact.objects.none(), required=False, empty_label="— a model directory instead —",
        help_text="A registered base or reward model of this project.",
    )
    base_model_path = forms.CharField(
        required=False, max_length=500, label="Model directory",
        help_text="A Hugging Face model directory under the operator's model roots (RLHF_MODEL_ROOTS).",
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
        self.shared_models = shared_model_dirs()
        self.fields["base_model_path"].widget.attrs["list"] = "shared-models"
        roots = ", ".join(str(root) for root in model_roots())
        self.fields["base_model_path"].help_text = (
            f"A Hugging Face model directory under the operator's model roots: {roots}." if roots
            else "None allowed: the operator has shared no model roots (RLHF_MODEL_ROOTS); choose a registered model.")
        self.fields["base_artifact"].initial = selectors.base_model_default_for_reward(project=project)

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
    sample = forms.IntegerField(required=False, min_value=1, max_value=10_000, label="…or sample N from the pool",
                                help_text="Used when no prompts are pasted or uploaded.")
    temperature = forms.FloatField(initial=1.0, min_value=0.01, max_value=10.0)
    top_p = forms.FloatField(initial=1.0, min_value=0.01, max_value=1.0)
    max_new_tokens = forms.IntegerField(initial=64, min_value=1, max_value=8192)
    seed = forms.IntegerField(initial=0, min_value=0)
    health_override = forms.CharField(required=False, max_length=500, label="Override the health gate: why",
                                      help_text="Only for a policy that failed the health gate; recorded with your name.")

    def __init__(self, *args, project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fields["policy"].queryset = ModelArtifact.objects.filter(
            project=project, kind__in=[ModelArtifact.Kind.POLICY, ModelArtifact.Kind.BASE]).exclude(
            kind=ModelArtifact.Kind.BASE, name__in=selectors.REWARD_BASE_NAMES).order_by("-id")
        self.fields["policy"].initial = selectors.policy_default(project=project)
        pool = project.pool_prompts.count()
        self.fields["sample"].initial = min(pool, START_ROUND_SAMPLE) or None

    def clean(self) -> dict:
        data = super().clean()
        pasted, uploaded = bool((data.get("prompts_text") or "").strip()), bool(data.get("prompts_file"))
        if pasted and uploaded:
            raise forms.ValidationError("Give pasted prompts or a file of prompts, not both.")
        if pasted or uploaded:
            data["sample"] = None  # the pre-filled pool sample gives way to the prompts given
        elif not data.get("sample"):
            raise forms.ValidationError("Give a prompt set: pasted prompts, a file, or N from the pool.")
        return data

    def prompt_lines(self) -> list[str | bytes] | None:
        """Lines of the pasted or uploaded prompts (plain lines become {"prompt": line}); None to sample."""
        import json

        if self.cleaned_data.get("prompts_file"):  # streamed line by line, never read whole
            return upload_lines(self.cleaned_data["prompts_file"], max_line_bytes=settings.IMPORT_MAX_LINE_BYTES,
                                location="prompts_file")
        text = self.cleaned_data.get("prompts_text") or ""
        if not text.strip():
            return None
        return [line if line.lstrip().startswith("{") else json.dumps({"prompt": line.strip()})
                for line in text.splitlines() if line.strip()]

    def sampling(self) -> dict:
        return {key: self.cleaned_data[key] for key in ("temperature", "top_p", "max_new_tokens", "seed")}


class PolicyRunForm(SourceChoiceForm):
    """Launch SFT, DPO, PPO or GRPO from a policy (and, for PPO/GRPO, a reward model)."""

    kind = forms.ChoiceField(choices=[("dpo", "DPO"), ("ppo", "PPO"), ("grpo", "GRPO"), ("sft", "SFT")])
    policy = forms.ModelChoiceField(queryset=ModelArtifact.objects.none(), help_text="Starting policy (or base).")
    reward_artifact = forms.ModelChoiceField(queryset=ModelArtifact.objects.none(), required=False,
                                             label="Reward model", help_text="PPO/GRPO.")
    reference_artifact = forms.ModelChoiceField(
        queryset=ModelArtifact.objects.none(), required=False, label="DPO reference policy",
        empty_label="— the stored generation log-probs —",
        help_text="DPO: a policy of this project whose log-probs are the reference (e.g. round 0's: a KL anchor "
                  "that does not move with the rounds); empty: each sample's stored log-prob.")
    reward_fn = forms.ChoiceField(required=False, label="Reward function", choices=(),
                                  help_text="PPO/GRPO: a rule-based reward the operator registered (by name).")
    rounds = forms.CharField(required=False, max_length=200,
                             help_text="DPO: rounds to train on (empty: all). SFT: rounds whose top-ranked responses join the demonstrations.")
    config = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 3}), initial="{}",
                             help_text='Trainer settings as JSON, e.g. {"beta": 0.1, "epochs": 2}. DPO early '
                                       'stopping on held-out preference accuracy: {"eval_fraction": 0.1, '
                                       '"early_stopping_patience": 3} (docs/loop.md).')

    def __init__(self, *args, project, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        artifacts = ModelArtifact.objects.filter(project=project).order_by("-id")
        policies = artifacts.filter(kind__in=[ModelArtifact.Kind.POLICY, ModelArtifact.Kind.BASE])
        # a sequence classifier is no policy
        self.fields["policy"].queryset = policies.exclude(kind=ModelArtifact.Kind.BASE,
                                                          name__in=selectors.REWARD_BASE_NAMES)
        self.fields["reward_artifact"].queryset = artifacts.filter(kind=ModelArtifact.Kind.REWARD)
        self.fields["reference_artifact"].queryset = artifacts.filter(kind=ModelArtifact.Kind.POLICY, is_adapter=False)
        self.fields["reward_fn"].choices = [("", "— none —")] + [(n, n) for n in hook_names(kind="reward_fn")]
        self.fields["policy"].initial = selectors.policy_default(project=project)
        self.fields["reward_artifact"].initial = self.fields["reward_artifact"].queryset.first()

    clean_rounds = RewardRunForm.clean_rounds

    def clean(self) -> dict:
        data = super().clean()
        if data.get("reward_fn") and isinstance(data.get("config"), dict):
            data["config"] = {**data["config"], "reward_fn": data["reward_fn"]}
        if data.get("kind") in ("dpo", "sft"):  # the field is pre-filled for PPO/GRPO; these kinds take none
            data["reward_artifact"] = None
        return data

    def clean_config(self) -> dict:
        raw = (self.cleaned_data.get("config") or "").strip() or "{}"
        try:
            value = json_loads_bounded(raw)
        except ValueError as error:
            raise forms.ValidationError(f"Not valid JSON: {error}") from None
        if not isinstance(value, dict):
            raise forms.ValidationError("Give a JSON object.")
        return value


class PolicyDataForm(forms.Form):
    file = forms.FileField(help_text='JSONL: {"prompt"|"messages", "response"} demonstrations and {"prompt"|"messages"} pool prompts.')
