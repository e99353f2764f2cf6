"""Django admin for runs, snapshots, metrics and artifacts (read-mostly: runs change through services)."""
from django import forms
from django.contrib import admin

from annotation.errors import InvalidInput
from training.health import health_thresholds_validate, task_checks_resolve
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


class HealthSettingsForm(forms.ModelForm):
    """The admin's edits pass the service's validation (``training.health``): a bad threshold is refused, not
    stored for the next policy job to fail on."""

    class Meta:
        model = HealthSettings
        fields = ["project", "thresholds", "task_checks"]

    def clean_thresholds(self):
        return self._valid(health_thresholds_validate, self.cleaned_data.get("thresholds"))

    def clean_task_checks(self):
        return self._valid(task_checks_resolve, self.cleaned_data.get("task_checks"))

    @staticmethod
    def _valid(validate, value):
        try:
            validate(value)
        except InvalidInput as error:
            raise forms.ValidationError(error.message) from error
        return value


@admin.register(HealthSettings)
class HealthSettingsAdmin(admin.ModelAdmin):
    form = HealthSettingsForm
    list_display = ["project", "thresholds", "task_checks", "updated_at"]
    raw_id_fields = ["project"]
