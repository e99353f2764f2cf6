from django.urls import path

from lab import api as arena_api

urlpatterns = [
    path("projects/<slug:slug>/arenas/", arena_api.arena_list, name="api-arena-list"),
    path("projects/<slug:slug>/arenas/<int:arena_id>/next/", arena_api.arena_next, name="api-arena-next"),
    path("projects/<slug:slug>/arenas/<int:arena_id>/votes/", arena_api.arena_vote, name="api-arena-vote"),
    path("projects/<slug:slug>/arena/leaderboard/", arena_api.arena_leaderboard, name="api-arena-leaderboard"),
]
