from __future__ import annotations

from django.urls import path

from routes import views

app_name = "routes"

urlpatterns = [
    path("", views.route_list, name="route-list"),
]
