from django.urls import path

from annotation import views
from annotation.quality import views as quality_views

app_name = "annotation"
urlpatterns = [
    path("", views.home, name="home"),
    path("p/<slug:slug>/", views.project_detail, name="project"),
    path("p/<slug:slug>/label/", views.label, name="label"),
    path("p/<slug:slug>/label/last/", views.label_edit_last, name="edit-last"),
    path("p/<slug:slug>/import/", views.project_import, name="import"),
    path("p/<slug:slug>/export/", views.project_export, name="export"),
    path("p/<slug:slug>/quality/", quality_views.quality_page, name="quality"),
    path("p/<slug:slug>/quality/settings/", quality_views.quality_settings, name="quality-settings"),
    path("p/<slug:slug>/quality/weights/", quality_views.quality_weights, name="quality-weights"),
    path("p/<slug:slug>/quality/exclusion/", quality_views.quality_exclusion, name="quality-exclusion"),
    path("p/<slug:slug>/quality/review/<int:prompt_id>/", quality_views.quality_review, name="quality-review"),
    path("p/<slug:slug>/quality/gold/", quality_views.quality_gold_import, name="quality-gold"),
    path("p/<slug:slug>/quality/ai-labelers/", quality_views.quality_ai_labeler_add, name="quality-ai-labeler-add"),
    path("p/<slug:slug>/quality/ai-labelers/run/", quality_views.quality_ai_labeler_run,
         name="quality-ai-labeler-run"),
    path("p/<slug:slug>/quality/selection/", quality_views.quality_selection, name="quality-selection"),
    path("p/<slug:slug>/quality/consensus.jsonl", quality_views.quality_consensus, name="quality-consensus"),
    path("assignments/<int:assignment_id>/submit/", views.assignment_submit, name="submit"),
    path("assignments/<int:assignment_id>/skip/", views.assignment_skip, name="skip"),
    path("assignments/<int:assignment_id>/edit/", views.assignment_edit, name="edit"),
    path("assignments/<int:assignment_id>/withdraw/", views.assignment_withdraw, name="withdraw"),
]
