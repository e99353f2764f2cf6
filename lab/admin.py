"""Django admin for the lab models. An arena's status, pairs and votes change through ``lab.services`` only (a vote
is also a ranking): the admin shows them read-only."""
from django.contrib import admin

from annotation.admin import ReadOnlyAdmin
from lab.models import Arena, ArenaPair, ArenaVote


@admin.register(Arena)
class ArenaAdmin(admin.ModelAdmin):
    """Status, summary and round change through ``lab.services`` (create, generate, close): shown read-only."""

    list_display = ["id", "project", "name", "model_a", "model_b", "status", "created_at"]
    list_filter = ["status", "project"]
    search_fields = ["name", "project__slug"]
    raw_id_fields = ["project", "model_a", "model_b", "round", "created_by"]
    readonly_fields = ["project", "model_a", "model_b", "round", "status", "sampling_params", "summary",
                       "created_by", "created_at"]

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(ArenaPair)
class ArenaPairAdmin(ReadOnlyAdmin):
    list_display = ["id", "arena", "prompt", "sample_a", "sample_b"]
    list_filter = ["arena__project"]
    search_fields = ["arena__name"]
    raw_id_fields = ["arena", "prompt", "sample_a", "sample_b"]


@admin.register(ArenaVote)
class ArenaVoteAdmin(ReadOnlyAdmin):
    """A vote is also a ranking: change neither by hand."""

    list_display = ["id", "pair", "voter", "outcome", "time_spent_ms", "created_at"]
    list_filter = ["outcome", "pair__arena__project"]
    search_fields = ["voter__username"]
    raw_id_fields = ["pair", "voter", "left_sample", "ranking"]
