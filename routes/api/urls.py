from __future__ import annotations

from django.urls import path

from routes.api import access, auth_profiles, destinations, views

urlpatterns = [
    path("routes/", views.RouteList.as_view(), name="route-list"),
    path("routes/<int:pk>/", views.RouteDetail.as_view(), name="route-detail"),
    path("routes/test/", views.RouteTest.as_view(), name="route-test"),
    path("routes/export/", views.RouteExport.as_view(), name="route-export"),
    path("routes/import/", views.RouteImport.as_view(), name="route-import"),
    path("destinations/", destinations.DestinationList.as_view(), name="destination-list"),
    path("destinations/<int:pk>/", destinations.DestinationDetail.as_view(), name="destination-detail"),
    path("auth-profiles/", auth_profiles.AuthProfileList.as_view(), name="auth-profile-list"),
    path("auth-profiles/<int:pk>/", auth_profiles.AuthProfileDetail.as_view(), name="auth-profile-detail"),
    path("access/rat/", access.RatList.as_view(), name="access-rat-list"),
    path("access/rat/<int:pk>/", access.RatDetail.as_view(), name="access-rat-detail"),
    path("access/relay/", access.RelayList.as_view(), name="access-relay-list"),
    path("access/relay/<int:pk>/", access.RelayDetail.as_view(), name="access-relay-detail"),
    path("access/users/", access.UserList.as_view(), name="access-user-list"),
    path("access/users/<int:pk>/", access.UserDetail.as_view(), name="access-user-detail"),
]
