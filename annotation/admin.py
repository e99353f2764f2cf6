"""Django admin for every annotation model (preferences, quality control). Rankings, their entries and pairs
are derived from what labelers submitted, computed reliabilities likewise: the admin shows them read-only (change them through the services, never by hand)."""
from django.contrib import admin

from annotation.models import (
    Assignment,
    Membership,
    PairwiseComparison,
    Project,
    Prompt,
    Ranking,
    RankingEntry,
    Round,
    Sample,
)
from annotation.quality.models import (
    AILabeler, GoldRanking, LabelerReliability, PromptPriority, PromptReview, QualitySettings, RankingExclusion,
    SelectionRecord,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    """View-only: no add, change or delete (derived records must stay consistent with their ranking)."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class MembershipInline(admin.TabularInline):
    model = Membership
    raw_id_fields = ["user"]
    extra = 0


@admin.register(Project)
class ProjectAdmin(admin.ModelAdmin):
    list_display = ["slug", "name", "k", "overlap", "lease_minutes", "created_at"]
    search_fields = ["slug", "name"]
    raw_id_fields = ["created_by"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [MembershipInline]


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ["user", "project", "role", "created_at"]
    list_filter = ["role", "project"]
    search_fields = ["user__username", "project__slug"]
    raw_id_fields = ["user", "project"]


@admin.register(Round)
class RoundAdmin(admin.ModelAdmin):
    list_display = ["project", "number", "status", "source", "created_at"]
    list_filter = ["status", "project"]
    search_fields = ["project__slug", "source"]
    raw_id_fields = ["project"]


class SampleInline(admin.TabularInline):
    model = Sample
    fields = ["position", "model_name", "text", "logprob", "num_tokens"]
    readonly_fields = fields
    extra = 0
    can_delete = False


@admin.register(Prompt)
class PromptAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "round", "external_id", "is_gold", "created_at"]
    list_filter = ["is_gold", "project", "round__status"]
    search_fields = ["external_id", "messages"]
    raw_id_fields = ["project", "round"]
    inlines = [SampleInline]


@admin.register(Sample)
class SampleAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "position", "model_name", "num_tokens", "created_at"]
    list_filter = ["model_name", "prompt__project"]
    search_fields = ["text", "model_name"]
    raw_id_fields = ["prompt"]
    readonly_fields = ["text_sha256"]


@admin.register(Assignment)
class AssignmentAdmin(admin.ModelAdmin):
    list_display = ["id", "labeler", "prompt", "status", "created_at", "expires_at", "finished_at"]
    list_filter = ["status", "prompt__project"]
    search_fields = ["labeler__username", "skip_reason"]
    raw_id_fields = ["prompt", "labeler"]
    readonly_fields = ["shown_order", "created_at", "finished_at"]


class RankingEntryInline(admin.TabularInline):
    model = RankingEntry
    fields = ["sample", "tier", "shown_position", "flags"]
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Ranking)
class RankingAdmin(ReadOnlyAdmin):
    list_display = ["id", "prompt", "labeler", "source", "time_spent_ms", "created_at"]
    list_filter = ["source", "prompt__project"]
    search_fields = ["labeler__username"]
    raw_id_fields = ["prompt", "labeler", "assignment"]
    inlines = [RankingEntryInline]


@admin.register(RankingEntry)
class RankingEntryAdmin(ReadOnlyAdmin):
    list_display = ["id", "ranking", "sample", "tier", "shown_position", "flags"]
    list_filter = ["tier"]
    search_fields = ["ranking__labeler__username"]
    raw_id_fields = ["ranking", "sample"]


@admin.register(PairwiseComparison)
class PairwiseComparisonAdmin(ReadOnlyAdmin):
    list_display = ["id", "prompt", "chosen", "rejected", "margin", "weight", "ranking"]
    list_filter = ["margin", "prompt__project"]
    search_fields = ["ranking__labeler__username"]
    raw_id_fields = ["ranking", "prompt", "chosen", "rejected"]


# ----------------------------------------------------------------------------- quality control

@admin.register(QualitySettings)
class QualitySettingsAdmin(admin.ModelAdmin):
    list_display = ["project", "gold_rate", "review_threshold", "speed_ratio", "updated_at"]
    raw_id_fields = ["project"]
    search_fields = ["project__slug"]


@admin.register(GoldRanking)
class GoldRankingAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "created_by", "created_at"]
    list_filter = ["prompt__project"]
    search_fields = ["prompt__external_id"]
    raw_id_fields = ["prompt", "created_by"]


@admin.register(RankingExclusion)
class RankingExclusionAdmin(admin.ModelAdmin):
    list_display = ["id", "ranking", "reason", "excluded_by", "created_at"]
    list_filter = ["ranking__prompt__project"]
    search_fields = ["reason", "ranking__labeler__username"]
    raw_id_fields = ["ranking", "excluded_by"]


@admin.register(PromptReview)
class PromptReviewAdmin(admin.ModelAdmin):
    list_display = ["id", "prompt", "status", "reviewed_by", "created_at"]
    list_filter = ["status", "prompt__project"]
    search_fields = ["note"]
    raw_id_fields = ["prompt", "reviewed_by"]


@admin.register(LabelerReliability)
class LabelerReliabilityAdmin(ReadOnlyAdmin):
    """Computed by the quality services; recompute rather than edit."""

    list_display = ["project", "labeler", "reliability", "weight", "gold_pairs", "consensus_pairs", "updated_at"]
    list_filter = ["project"]
    search_fields = ["labeler__username"]
    raw_id_fields = ["project", "labeler"]


@admin.register(AILabeler)
class AILabelerAdmin(admin.ModelAdmin):
    list_display = ["user", "project", "kind", "spec", "tie_threshold", "created_at"]
    list_filter = ["kind", "project"]
    search_fields = ["user__username", "spec"]
    raw_id_fields = ["user", "project"]


@admin.register(SelectionRecord)
class SelectionRecordAdmin(ReadOnlyAdmin):
    list_display = ["id", "round", "strategy", "created_by", "created_at"]
    list_filter = ["strategy", "round__project"]
    search_fields = ["round__project__slug"]
    raw_id_fields = ["round", "created_by"]


@admin.register(PromptPriority)
class PromptPriorityAdmin(ReadOnlyAdmin):
    list_display = ["prompt", "score", "selection"]
    list_filter = ["selection__strategy"]
    search_fields = ["prompt__external_id"]
    raw_id_fields = ["prompt", "selection"]
