"""delivery's API routes, included by `esaroutes/api_urls.py` (names `api:<noun>-<verb>`)."""

from __future__ import annotations

from django.urls import path

from delivery.api import audit, bounce_profiles, hosts, queue, tracking, views
from esaroutes.api import views as api

urlpatterns = [
    path("messages", views.MessageInject.as_view(), name="message-inject"),
    path("queue/destinations/", queue.QueueDestinations.as_view(), name="queue-destinations"),
    path("queue/recipients/", queue.QueueRecipients.as_view(), name="queue-recipients"),
    path("queue/actions/", queue.QueueActions.as_view(), name="queue-actions"),
    path("messages/", tracking.MessageSearch.as_view(), name="message-list"),
    path("messages/<int:mid>/", tracking.MessageDetail.as_view(), name="message-detail"),
    path("messages/<int:mid>/raw", tracking.MessageRaw.as_view(), name="message-raw"),
    path("hosts/", hosts.HostList.as_view(), name="host-list"),
    path("domains/<str:domain>/", hosts.DomainStatus.as_view(), name="domain-status"),
    path("log/", views.MailLog.as_view(), name="maillog"),
    path("audit/", audit.AuditLog.as_view(), name="audit-list"),
    *api.rows_paths("webhooks", "webhook", views.WebhookList, views.WebhookDetail),
    path("webhooks/<int:pk>/attempts/", views.WebhookAttempts.as_view(), name="webhook-attempts"),
    *api.rows_paths(
        "bounce-profiles", "bounce-profile", bounce_profiles.BounceProfileList, bounce_profiles.BounceProfileDetail
    ),
]
