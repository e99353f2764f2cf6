from django.urls import path

from annotation import api
from annotation.quality import api as quality_api

urlpatterns = [
    path("hooks/", api.hook_list, name="api-hook-list"),
    path("projects/", api.project_list, name="api-project-list"),
    path("projects/<slug:slug>/", api.project_detail, name="api-project-detail"),
    path("projects/<slug:slug>/assignments/next/", api.assignment_next, name="api-assignment-next"),
    path("projects/<slug:slug>/import/", api.project_import, name="api-project-import"),
    path("projects/<slug:slug>/export/", api.ProjectExport.as_view(), name="api-project-export"),
    path("projects/<slug:slug>/rankings/", api.RankingList.as_view(), name="api-ranking-list"),
    path("projects/<slug:slug>/quality/", quality_api.quality, name="api-quality"),
    path("projects/<slug:slug>/quality/settings/", quality_api.quality_settings, name="api-quality-settings"),
    path("projects/<slug:slug>/quality/weights/", quality_api.quality_weights, name="api-quality-weights"),
    path("projects/<slug:slug>/quality/exclusions/", quality_api.quality_exclusion, name="api-quality-exclusion"),
    path("projects/<slug:slug>/quality/gold/", quality_api.quality_gold, name="api-quality-gold"),
    path("projects/<slug:slug>/quality/reviews/", quality_api.quality_review, name="api-quality-review"),
    path("projects/<slug:slug>/quality/ai-labelers/", quality_api.quality_ai_labelers, name="api-quality-ai-labelers"),
    path("projects/<slug:slug>/quality/ai-labelers/run/", quality_api.quality_ai_labeler_run,
         name="api-quality-ai-labeler-run"),
    path("projects/<slug:slug>/quality/selections/", quality_api.quality_selection, name="api-quality-selection"),
    path("projects/<slug:slug>/quality/consensus/", quality_api.quality_consensus, name="api-quality-consensus"),
    path("assignments/<int:assignment_id>/ranking/", api.assignment_ranking, name="api-assignment-ranking"),
    path("assignments/<int:assignment_id>/skip/", api.assignment_skip, name="api-assignment-skip"),
]
