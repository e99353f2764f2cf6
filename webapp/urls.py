from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import IsAuthenticated

from webapp.security import ThrottledLoginView, admin_login

urlpatterns = [
    path("admin/login/", admin_login, name="admin-login"),  # ahead of the admin site: its login is throttled
    path("admin/", admin.site.urls),
    path("accounts/login/", ThrottledLoginView.as_view(), name="login"),
    path("accounts/password_change/", auth_views.PasswordChangeView.as_view(), name="password_change"),
    path("accounts/password_change/done/", auth_views.PasswordChangeDoneView.as_view(), name="password_change_done"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    # The API's description is for users: the schema answers 401/403 and the docs page sends to log-in first.
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[IsAuthenticated]), name="api-schema"),
    path("api/docs/", login_required(SpectacularSwaggerView.as_view(url_name="api-schema",
                                                                    permission_classes=[IsAuthenticated])),
         name="api-docs"),
    path("api/", include("annotation.api_urls")),
    path("api/", include("training.api_urls")),
    path("api/", include("lab.api_urls")),
    path("training/", include("training.urls")),
    path("", include("annotation.urls")),
    path("", include("lab.urls")),
]
