"""API shapes of runs and artifacts. Only the launch fields (kind, config, the chosen artifacts, rounds, sources)
are writable: the project comes from the URL and the launcher from the session (mass assignment of anything else
is rejected)."""
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from annotation.errors import InvalidInput
from annotation.provenance import CHOICES, DEFAULT_CHOICE, source_selection_parse
from training.accuracy import accuracy_of_metrics, accuracy_of_summary

from training.models import ModelArtifact, TrainingRun

ACCURACY_HELP = ("Held-out pairwise accuracy with its 95% Wilson interval: {accuracy, pairs, ci_low, ci_high, "
                 "too_small, warning}; null without a held-out set. too_small: fewer than 100 pairs or an interval "
                 "wider than 0.2.")


class HeldOutAccuracySerializer(serializers.Serializer):
    accuracy = serializers.FloatField()
    pairs = serializers.IntegerField(allow_null=True)
    ci_low = serializers.FloatField(allow_null=True)
    ci_high = serializers.FloatField(allow_null=True)
    too_small = serializers.BooleanField()
    warning = serializers.CharField()


class RunCreateSerializer(serializers.Serializer):
    kind = serializers.ChoiceField(choices=TrainingRun.Kind.choices, default=TrainingRun.Kind.REWARD)
    config = serializers.DictField(help_text="Trainer settings, e.g. {\"epochs\": 2, \"learning_rate\": 5e-5}.")
    base_artifact = serializers.IntegerField(required=False, allow_null=True, help_text="A ModelArtifact id of this project.")
    rounds = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False, allow_null=True)
    reward_artifact = serializers.IntegerField(required=False, allow_null=True,
                                               help_text="PPO/GRPO: a reward-model ModelArtifact id of this project.")
    reference_artifact = serializers.IntegerField(
        required=False, allow_null=True,
        help_text="DPO: a policy ModelArtifact id of this project whose log-probs are the reference (scored once), "
                  "instead of the stored generation log-probs (the default).")
    sources = serializers.ChoiceField(choices=list(CHOICES), default=DEFAULT_CHOICE,
                                      help_text="Which rankings the snapshot takes: human (default), ai, both, "
                                                "weighted, arena.")
    include_arena = serializers.BooleanField(default=False, help_text="Add arena votes to the chosen sources.")
    ai_weight = serializers.FloatField(required=False, allow_null=True,
                                       help_text="weighted only: AI pair weight factor in (0, 1], default 0.5.")

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError(
                {unknown[0]: "Unknown field; allowed: " + ", ".join(self.fields) + "."})
        try:
            attrs["selection"] = source_selection_parse(
                choice=attrs.pop("sources", None), include_arena=attrs.pop("include_arena", False),
                ai_weight=attrs.pop("ai_weight", None))
        except InvalidInput as exc:
            raise serializers.ValidationError({exc.location: exc.message}) from None
        return attrs


class RoundStartSerializer(serializers.Serializer):
    policy = serializers.IntegerField(help_text="The policy ModelArtifact id that generates the round.")
    prompts = serializers.ListField(required=False, help_text="New prompts: strings or lists of {role, content}.")
    sample = serializers.IntegerField(required=False, min_value=1, max_value=10_000, help_text="…or N from the pool.")
    sampling = serializers.DictField(required=False, help_text="k, temperature, top_p, max_new_tokens, seed, batch_size.")
    health_override = serializers.CharField(required=False, max_length=500, allow_blank=True,
                                            help_text="Why a policy that failed the health gate may generate anyway.")

    def validate(self, attrs):
        unknown = sorted(set(self.initial_data) - set(self.fields))
        if unknown:
            raise serializers.ValidationError({unknown[0]: "Unknown field; allowed: policy, prompts, sample, sampling, "
                                                           "health_override."})
        if bool(attrs.get("prompts")) == bool(attrs.get("sample")):
            raise serializers.ValidationError({"prompts": "Give exactly one of prompts or sample."})
        return attrs


class SnapshotSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    filters = serializers.DictField()
    num_rankings = serializers.IntegerField()
    num_pairs = serializers.IntegerField()
    num_prompts = serializers.IntegerField()
    content_hash = serializers.CharField()


class RunSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    launched_by = serializers.SlugRelatedField(slug_field="username", read_only=True)
    snapshot = SnapshotSerializer(read_only=True)
    artifact = serializers.SerializerMethodField()
    held_out_accuracy = serializers.SerializerMethodField()
    reference = serializers.SerializerMethodField(
        help_text="DPO: the reference it scores against: {source: stored|artifact|directory, artifact, name, path}; "
                  "null for other kinds.")

    class Meta:
        model = TrainingRun
        fields = ["id", "project", "kind", "status", "config", "snapshot", "base_artifact", "round", "launched_by", "attempts",
                  "max_attempts", "cancel_requested", "step", "total_steps", "summary", "error", "created_at",
                  "started_at", "finished_at", "artifact", "overoptimised", "flag_reason", "held_out_accuracy",
                  "reference"]
        read_only_fields = fields

    def get_reference(self, run) -> dict | None:
        from training.selectors import run_reference

        return run_reference(run=run, user=self.context.get("user"))

    def get_artifact(self, run) -> int | None:
        artifact = getattr(run, "artifact", None)
        return artifact.pk if artifact else None

    def to_representation(self, run):
        """Error, log, config and summary as the requesting user may read them (``context["user"]``;
        without one, redacted: server paths and tracebacks are for admins only)."""
        from training.selectors import run_disclosed

        data = super().to_representation(run)
        shown = run_disclosed(run=run, user=self.context.get("user"))
        data.update({key: value for key, value in shown.items() if key in data})
        return data
    @extend_schema_field(HeldOutAccuracySerializer(allow_null=True, help_text=ACCURACY_HELP))
    def get_held_out_accuracy(self, run) -> dict | None:
        return accuracy_of_summary(run.summary)


class RunDetailSerializer(RunSerializer):
    progress = serializers.SerializerMethodField(help_text="status, step, total, percent, eta_seconds…")
    metrics = serializers.SerializerMethodField(help_text="{train: {step: [...], loss: [...]}, eval: {...}}")
    log_tail = serializers.CharField(read_only=True)

    def get_progress(self, run) -> dict:
        from training.selectors import run_progress

        return run_progress(run=run)

    def get_metrics(self, run) -> dict:
        from training.selectors import run_metric_series

        return run_metric_series(run=run)

    class Meta(RunSerializer.Meta):
        fields = RunSerializer.Meta.fields + ["progress", "metrics", "log_tail"]
        read_only_fields = fields


class ArtifactSerializer(serializers.ModelSerializer):
    project = serializers.SlugRelatedField(slug_field="slug", read_only=True)
    held_out_accuracy = serializers.SerializerMethodField()

    class Meta:
        model = ModelArtifact
        fields = ["id", "project", "kind", "name", "path", "is_adapter", "base_model", "parent", "run", "snapshot",
                  "rounds", "metrics", "size_bytes", "healthy", "health", "health_override_by", "health_override_reason",
                  "health_override_at", "created_at", "held_out_accuracy"]
        read_only_fields = fields

    def to_representation(self, artifact):
        """Absolute paths redacted unless ``context["user"]`` is an admin."""
        from training.selectors import artifact_disclosed

        return {**super().to_representation(artifact),
                **artifact_disclosed(artifact=artifact, user=self.context.get("user"))}
    @extend_schema_field(HeldOutAccuracySerializer(allow_null=True, help_text=ACCURACY_HELP))
    def get_held_out_accuracy(self, artifact) -> dict | None:
        return accuracy_of_metrics(artifact.metrics)
