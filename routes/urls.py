from __future__ import annotations

from django.urls import path

from routes import views
from routes.access import views as access_views

app_name = "routes"

urlpatterns = [
    path("", views.route_list, name="route-list"),
    path("add/", views.route_add, name="route-add"),
    path("<int:pk>/", views.route_edit, name="route-edit"),
    path("host-row/", views.host_row, name="host-row"),
    path("delete/", views.route_delete, name="route-delete"),
    path("clear/", views.routes_clear, name="routes-clear"),
    path("test/", views.route_test, name="route-test"),
    path("test/send/", views.route_send_test, name="route-send-test"),
    path("export/", views.routes_export, name="routes-export"),
    path("import/", views.routes_import, name="routes-import"),
    path("changes/", views.audit_list, name="audit-list"),
    path("destinations/", views.destination_list, name="destination-list"),
    path("destinations/add/", views.destination_add, name="destination-add"),
    path("destinations/<int:pk>/", views.destination_edit, name="destination-edit"),
    path("destinations/<int:pk>/delete/", views.destination_delete, name="destination-delete"),
    path("access/", access_views.access_list, name="access-list"),
    path("access/rat/", access_views.rat_save, name="access-rat-save"),
    path("access/rat/<int:pk>/delete/", access_views.rat_delete, name="access-rat-delete"),
    path("access/relay/", access_views.relay_add, name="access-relay-add"),
    path("access/relay/<int:pk>/delete/", access_views.relay_delete, name="access-relay-delete"),
    path("access/users/", access_views.user_save, name="access-user-save"),
    path("access/users/<int:pk>/delete/", access_views.user_delete, name="access-user-delete"),
]
