from __future__ import annotations

from django.urls import path

from esaroutes.api import views as api
from routes.api import access, auth_profiles, destinations, views

urlpatterns = [
    *api.rows_paths("routes", "route", views.RouteList, views.RouteDetail),
    path("routes/test/", views.RouteTest.as_view(), name="route-test"),
    path("routes/export/", views.RouteExport.as_view(), name="route-export"),
    path("routes/import/", views.RouteImport.as_view(), name="route-import"),
    *api.rows_paths("destinations", "destination", destinations.DestinationList, destinations.DestinationDetail),
    *api.rows_paths("auth-profiles", "auth-profile", auth_profiles.AuthProfileList, auth_profiles.AuthProfileDetail),
    *api.rows_paths("access/rat", "access-rat", access.RatList, access.RatDetail),
    *api.rows_paths("access/relay", "access-relay", access.RelayList, access.RelayDetail),
    *api.rows_paths("access/users", "access-user", access.UserList, access.UserDetail),
]
