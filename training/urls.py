from django.urls import path

from training import lineage_views, views

app_name = "training"
urlpatterns = [
    path("projects/<slug:slug>/runs/", views.project_runs, name="project_runs"),
    path("projects/<slug:slug>/base-models/", views.base_models_build, name="base_models_build"),
    path("projects/<slug:slug>/lineage/", lineage_views.project_lineage, name="project_lineage"),
    path("projects/<slug:slug>/lineage/start-round/", lineage_views.start_round, name="start_round"),
    path("projects/<slug:slug>/lineage/policy-run/", lineage_views.policy_run, name="policy_run"),
    path("projects/<slug:slug>/lineage/import/", lineage_views.policy_data, name="policy_data"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/metrics.json", views.run_metrics, name="run_metrics"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("artifacts/<int:artifact_id>/", views.artifact_detail, name="artifact_detail"),
    path("artifacts/<int:artifact_id>/download/", views.artifact_download, name="artifact_download"),
]
