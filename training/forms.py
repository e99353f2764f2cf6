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
