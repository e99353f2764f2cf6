from django.urls import path

from training import views

app_name = "training"
urlpatterns = [
    path("projects/<slug:slug>/runs/", views.project_runs, name="project_runs"),
    path("runs/<int:run_id>/", views.run_detail, name="run_detail"),
    path("runs/<int:run_id>/metrics.json", views.run_metrics, name="run_metrics"),
    path("runs/<int:run_id>/cancel/", views.run_cancel, name="run_cancel"),
    path("artifacts/<int:artifact_id>/", views.artifact_detail, name="artifact_detail"),
    path("artifacts/<int:artifact_id>/download/", views.artifact_download, name="artifact_download"),
]
