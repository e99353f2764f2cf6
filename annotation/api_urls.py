from django.urls import path

from annotation import api

urlpatterns = [
    path("projects/", api.project_list, name="api-project-list"),
    path("projects/<slug:slug>/", api.project_detail, name="api-project-detail"),
    path("projects/<slug:slug>/assignments/next/", api.assignment_next, name="api-assignment-next"),
    path("projects/<slug:slug>/import/", api.project_import, name="api-project-import"),
    path("projects/<slug:slug>/export/", api.ProjectExport.as_view(), name="api-project-export"),
    path("projects/<slug:slug>/rankings/", api.RankingList.as_view(), name="api-ranking-list"),
    path("assignments/<int:assignment_id>/ranking/", api.assignment_ranking, name="api-assignment-ranking"),
    path("assignments/<int:assignment_id>/skip/", api.assignment_skip, name="api-assignment-skip"),
]
