from __future__ import annotations

from django.urls import path

from routes.api import destinations, views

urlpatterns = [
    path("routes/", views.RouteList.as_view(), name="route-list"),
    path("routes/<int:pk>/", views.RouteDetail.as_view(), name="route-detail"),
    path("routes/test/", views.RouteTest.as_view(), name="route-test"),
    path("routes/export/", views.RouteExport.as_view(), name="route-export"),
    path("routes/import/", views.RouteImport.as_view(), name="route-import"),
    path("destinations/", destinations.DestinationList.as_view(), name="destination-list"),
    path("destinations/<int:pk>/", destinations.DestinationDetail.as_view(), name="destination-detail"),
]
