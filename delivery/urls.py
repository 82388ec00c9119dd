from __future__ import annotations

from django.urls import path

from delivery import views

app_name = "delivery"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("log/", views.maillog_page, name="maillog"),
    path("log/files/<str:name>", views.maillog_download, name="maillog-download"),
    path("tracking/", views.tracking, name="tracking"),
    path("tracking/<int:mid>/", views.message_detail, name="message-detail"),
    path("tracking/<int:mid>/raw", views.message_raw, name="message-raw"),
    path("queue/", views.queue_page, name="queue"),
    path("hosts/", views.host_list, name="host-list"),
    path("hosts/domain/<str:domain>/", views.domain_detail, name="domain-detail"),
    path("audit/", views.audit_list, name="audit-list"),
]
