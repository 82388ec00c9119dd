from __future__ import annotations

from django.urls import path

from delivery import views

app_name = "delivery"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
]
