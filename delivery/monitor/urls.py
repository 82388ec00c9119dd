from __future__ import annotations

from django.urls import path

from delivery.monitor import views, webhooks

app_name = "delivery"

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("log/", views.maillog_page, name="maillog"),
    path("log/files/<str:name>", views.maillog_download, name="maillog-download"),
    path("tracking/", views.tracking, name="tracking"),
    path("tracking/<int:mid>/", views.message_detail, name="message-detail"),
    path("tracking/<int:mid>/raw", views.message_raw, name="message-raw"),
    path("queue/", views.queue_page, name="queue"),
    path("queue/deliver-now/", views.queue_action, {"action": "deliver"}, name="queue-deliver-now"),
    path("queue/bounce/", views.queue_action, {"action": "bounce"}, name="queue-bounce"),
    path("queue/delete/", views.queue_action, {"action": "delete"}, name="queue-delete"),
    path("queue/redirect/", views.queue_action, {"action": "redirect"}, name="queue-redirect"),
    path("queue/suspend/", views.queue_suspension, {"action": "suspend"}, name="queue-suspend"),
    path("queue/resume/", views.queue_suspension, {"action": "resume"}, name="queue-resume"),
    path("hosts/", views.host_list, name="host-list"),
    path("hosts/<int:pk>/retry/", views.host_retry, name="host-retry"),
    path("hosts/domain/<str:domain>/", views.domain_detail, name="domain-detail"),
    path("audit/", views.audit_list, name="audit-list"),
    path("webhooks/", webhooks.webhook_list, name="webhook-list"),
    path("webhooks/<int:pk>/", webhooks.webhook_edit, name="webhook-edit"),
    path("webhooks/<int:pk>/delete/", webhooks.webhook_delete, name="webhook-delete"),
]
