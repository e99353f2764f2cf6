"""Django admin for runs, snapshots, metrics and artifacts (read-mostly: runs change through services)."""
from django.contrib import admin

from training.models import DatasetSnapshot, HealthSettings, MetricPoint, ModelArtifact, TrainingRun


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "status", "step", "total_steps", "attempts", "worker", "created_at"]
    list_filter = ["kind", "status", "project"]
    search_fields = ["id", "worker", "error"]
    raw_id_fields = ["project", "snapshot", "base_artifact", "round", "launched_by"]
    readonly_fields = ["claim_token", "heartbeat_at", "attempts", "step", "total_steps", "summary", "log_tail",
                       "error", "created_at", "started_at", "finished_at", "queued_at", "dispatches"]


@admin.register(DatasetSnapshot)
class DatasetSnapshotAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "num_rankings", "num_pairs", "num_prompts", "created_at"]
    list_filter = ["project"]
    raw_id_fields = ["project"]
    readonly_fields = ["filters", "num_rankings", "num_pairs", "num_prompts", "content_hash", "created_at"]
    exclude = ["rankings"]  # immutable, possibly thousands of rows


@admin.register(MetricPoint)
class MetricPointAdmin(admin.ModelAdmin):
    list_display = ["run", "split", "step", "values"]
    list_filter = ["split"]
    raw_id_fields = ["run"]


@admin.register(ModelArtifact)
class ModelArtifactAdmin(admin.ModelAdmin):
    list_display = ["id", "project", "kind", "name", "is_adapter", "size_bytes", "created_at"]
    list_filter = ["kind", "project"]
    search_fields = ["name", "path"]
    raw_id_fields = ["project", "parent", "run", "snapshot"]


@admin.register(HealthSettings)
class HealthSettingsAdmin(admin.ModelAdmin):
    list_display = ["project", "thresholds", "task_checks", "updated_at"]
    raw_id_fields = ["project"]
