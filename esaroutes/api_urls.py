"""`/api/v1/`: the schema and its documentation pages, then each app's endpoints (namespace `api`).

An app's endpoints live in its own `api` package (`routes/api/urls.py`, `delivery/api/urls.py`), included here
without a namespace of their own, so every name is `api:<noun>-<verb>` (`api:route-list`).
"""

from __future__ import annotations

from django.urls import include, path, re_path

from esaroutes.api import views

app_name = "api"

urlpatterns = [
    path("schema/", views.SchemaView.as_view(), name="schema"),
    path("docs/", views.SwaggerView.as_view(), name="docs"),
    path("redoc/", views.RedocView.as_view(), name="redoc"),
    path("", include("routes.api.urls")),
    path("", include("delivery.api.urls")),
    re_path(r"", views.NoSuchEndpoint.as_view()),  # last: any other path is a problem+json 404
]
