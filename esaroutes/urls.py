from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_not_required
from django.urls import include, path

from delivery.monitor import metrics
from esaroutes import login, token_views, views

admin.site.site_header = "esaroutes administration"
admin.site.site_title = "esaroutes"
admin.site.index_title = "Routes, queue and mail log"

handler400 = views.bad_request
handler403 = views.permission_denied
handler404 = views.page_not_found
handler500 = views.server_error

urlpatterns = [
    path("", include("delivery.monitor.urls")),
    path("routes/", include("routes.urls")),
    path("api/v1/", include("esaroutes.api_urls")),
    path("tokens/", token_views.token_list, name="token-list"),
    path("tokens/new/", token_views.token_create, name="token-create"),
    path("tokens/<int:pk>/revoke/", token_views.token_revoke, name="token-revoke"),
    path("login/", login_not_required(login.LoginView.as_view()), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("healthz", views.healthz, name="healthz"),
    path("favicon.ico", views.favicon, name="favicon"),  # for clients that ask without reading the page's <link>
    path("metrics", metrics.metrics_view, name="metrics"),
    path("admin/login/", login.admin_login),  # before admin.site.urls: the admin's page, behind the login throttle
    path("admin/", admin.site.urls),
]
