"""API shapes. Input serializers accept only the fields listed: the labeler is always the session's
user and the project comes from the URL, so `labeler`, `project`, `role` or `source` in a body are
rejected (mass assignment) rather than silently trusted."""
from rest_framework import serializers

from annotation.models import Assignment, Project, Ranking, RankingEntry
from annotation.services import MAX_TIME_SPENT_MS


class StrictSerializer(serializers.Serializer):
    """Rejects unknown body fields with a 400 naming them."""

    def to_internal_value(self, data):
        if hasattr(data, "keys"):
            unknown = sorted(set(data.keys()) - set(self.fields))
            if unknown:
                raise serializers.ValidationError({unknown[0]: [f"unexpected field(s): {', '.join(unknown)}"]})
        return super().to_internal_value(data)


class ErrorSerializer(serializers.Serializer):
    error = serializers.CharField(help_text="What was wrong.")
    location = serializers.CharField(help_text="Where: a field, e.g. tiers[1][0], or a file line.", allow_blank=True)


class ProgressSerializer(serializers.Serializer):
    prompts = serializers.IntegerField()
    open_prompts = serializers.IntegerField()
    slots_total = serializers.IntegerField()
    slots_filled = serializers.IntegerField()
    slots_leased = serializers.IntegerField()
    open_slots = serializers.IntegerField()
    rankings = serializers.IntegerField()
    pairs = serializers.IntegerField()
    percent_complete = serializers.FloatField()


class LabelerProgressSerializer(serializers.Serializer):
    done = serializers.IntegerField()
    skipped = serializers.IntegerField()
    remaining = serializers.IntegerField()


class ProjectSerializer(serializers.ModelSerializer):
    class Meta:
        model = Project
        fields = ["slug", "name", "k", "overlap", "created_at"]
        read_only_fields = fields


class ProjectDetailSerializer(ProjectSerializer):
    role = serializers.CharField(read_only=True, allow_null=True)
    can_manage = serializers.BooleanField(read_only=True)
    progress = ProgressSerializer(read_only=True)
    mine = LabelerProgressSerializer(read_only=True)

    class Meta(ProjectSerializer.Meta):
        fields = [*ProjectSerializer.Meta.fields, "guidelines", "role", "can_manage", "progress", "mine"]
        read_only_fields = fields


class MessageSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()


class ShownSampleSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    text = serializers.CharField(help_text="Untrusted model output: escape it before display.")


class AssignmentSerializer(serializers.ModelSerializer):
    project = serializers.CharField(source="prompt.project.slug", read_only=True)
    messages = MessageSerializer(source="prompt.messages", many=True, read_only=True)
    samples = serializers.SerializerMethodField()

    class Meta:
        model = Assignment
        fields = ["id", "project", "prompt_id", "status", "messages", "samples", "shown_order", "expires_at"]
        read_only_fields = fields

    def get_samples(self, assignment: Assignment) -> list[dict]:
        texts = dict(assignment.prompt.samples.values_list("pk", "text"))
        return ShownSampleSerializer([{"id": i, "text": texts[i]} for i in assignment.shown_order], many=True).data


class RankingSubmitSerializer(StrictSerializer):
    tiers = serializers.ListField(
        child=serializers.ListField(child=serializers.IntegerField(min_value=1), allow_empty=False),
        allow_empty=False, max_length=64, help_text="Sample ids, best tier first; ids in one tier are tied.",
    )
    flags = serializers.DictField(
        child=serializers.ListField(child=serializers.ChoiceField(choices=RankingEntry.Flag.choices), max_length=8),
        required=False, help_text="Sample id -> flags.",
    )
    time_spent_ms = serializers.IntegerField(min_value=0, max_value=MAX_TIME_SPENT_MS, required=False, default=0)
    comment = serializers.CharField(max_length=1000, required=False, allow_blank=True, default="",
                                    help_text="Free-text comment on this ranking.")
    all_bad = serializers.BooleanField(required=False, default=False,
                                       help_text="Every response is bad (the pairs are still the order given).")


class SkipSerializer(StrictSerializer):
    reason = serializers.CharField(max_length=500, help_text="Why this prompt is skipped.")


class ImportSerializer(StrictSerializer):
    file = serializers.FileField(help_text="JSONL file.")
    round = serializers.IntegerField(min_value=1, required=False, allow_null=True)


class ImportResultSerializer(serializers.Serializer):
    project_slug = serializers.CharField()
    round_number = serializers.IntegerField()
    created_project = serializers.BooleanField()
    prompts = serializers.IntegerField()
    samples = serializers.IntegerField()
    rankings = serializers.IntegerField()
    pairs = serializers.IntegerField()
    already_imported = serializers.BooleanField()


class RankingSerializer(serializers.ModelSerializer):
    labeler = serializers.SlugRelatedField(slug_field="username", read_only=True)
    tiers = serializers.SerializerMethodField()
    flags = serializers.SerializerMethodField()
    pair_count = serializers.SerializerMethodField()

    class Meta:
        model = Ranking
        fields = ["id", "prompt_id", "assignment_id", "labeler", "source", "time_spent_ms", "created_at",
                  "tiers", "flags", "pair_count", "comment", "all_bad"]
        read_only_fields = fields

    def _entries(self, ranking: Ranking) -> list[RankingEntry]:
        return sorted(ranking.entries.all(), key=lambda e: (e.tier, e.shown_position))

    def get_tiers(self, ranking: Ranking) -> list[list[int]]:
        tiers: dict[int, list[int]] = {}
        for entry in self._entries(ranking):
            tiers.setdefault(entry.tier, []).append(entry.sample_id)
        return [tiers[t] for t in sorted(tiers)]

    def get_flags(self, ranking: Ranking) -> dict[str, list[str]]:
        return {str(e.sample_id): e.flags for e in self._entries(ranking) if e.flags}

    def get_pair_count(self, ranking: Ranking) -> int:
        annotated = getattr(ranking, "n_pairs", None)  # annotated by the list endpoint: no query per row
        return annotated if annotated is not None else ranking.pairs.count()
