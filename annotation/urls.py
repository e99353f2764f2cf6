from django.urls import path

from annotation import views

app_name = "annotation"
urlpatterns = [
    path("", views.home, name="home"),
    path("p/<slug:slug>/", views.project_detail, name="project"),
    path("p/<slug:slug>/label/", views.label, name="label"),
    path("p/<slug:slug>/import/", views.project_import, name="import"),
    path("p/<slug:slug>/export/", views.project_export, name="export"),
    path("assignments/<int:assignment_id>/submit/", views.assignment_submit, name="submit"),
    path("assignments/<int:assignment_id>/skip/", views.assignment_skip, name="skip"),
]
