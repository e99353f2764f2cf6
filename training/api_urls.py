from django.urls import path

from training import api

urlpatterns = [
    path("projects/<slug:slug>/runs/", api.project_runs, name="api-project-runs"),
    path("projects/<slug:slug>/artifacts/", api.project_artifacts, name="api-project-artifacts"),
    path("projects/<slug:slug>/rounds/", api.project_rounds, name="api-project-rounds"),
    path("projects/<slug:slug>/lineage/", api.project_lineage, name="api-project-lineage"),
    path("runs/<int:run_id>/", api.run_detail, name="api-run-detail"),
    path("runs/<int:run_id>/cancel/", api.run_cancel, name="api-run-cancel"),
    path("artifacts/<int:artifact_id>/", api.artifact_detail, name="api-artifact-detail"),
    path("artifacts/<int:artifact_id>/download/", api.artifact_download, name="api-artifact-download"),
]
