"""Pages of the lab app, at the paths they always had (``/p/<slug>/arena/...``), in the ``lab`` namespace."""
from django.urls import path

from lab import views as arena_views

app_name = "lab"
urlpatterns = [
    path("p/<slug:slug>/arena/", arena_views.arena_index, name="arena"),
    path("p/<slug:slug>/arena/create/", arena_views.arena_create, name="arena-create"),
    path("p/<slug:slug>/arena/<int:arena_id>/vote/", arena_views.arena_vote, name="arena-vote"),
    path("p/<slug:slug>/arena/<int:arena_id>/close/", arena_views.arena_close, name="arena-close"),
]
