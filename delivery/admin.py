"""The delivery models in the Django admin.

The queue's state is changed only by `delivery.queue` (one transaction, state + attempts + log lines), so the
admin shows messages, recipients, attempts, hosts and log lines read-only, and its actions call the same
functions as the operator pages (`delivery.actions`). Bounce profiles are plain configuration and editable.
"""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from delivery import selectors
from delivery.models import BounceProfile, DeliveryAttempt, HostStatus, IdCounter, MailLogLine, Message, Recipient


class ReadOnlyAdmin(admin.ModelAdmin[Any]):
    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline[Any, Any]):
    extra = 0
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


@admin.register(BounceProfile)
class BounceProfileAdmin(admin.ModelAdmin[BounceProfile]):
    list_display = ("name", "max_retries", "max_queue_lifetime", "initial_retry", "max_retry_timeout", "send_bounces")
    search_fields = ("name",)


class RecipientInline(ReadOnlyInline):
    model = Recipient
    fields = ("rid", "address", "state", "attempts", "next_attempt_at", "last_code", "last_response", "last_host")
    readonly_fields = fields


class DeliveryAttemptInline(ReadOnlyInline):
    model = DeliveryAttempt
    fields = ("at", "recipient", "host", "port", "dcid", "outcome", "code", "response")
    readonly_fields = fields
    show_change_link = False


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("id", "received_at", "sender", "subject", "state", "icid", "size", "bounce_of")
    list_filter = ("state", "received_at")
    search_fields = ("=id", "sender", "message_id", "subject", "recipients__address")
    date_hierarchy = "received_at"
    show_full_result_count = False
    list_select_related = ("bounce_of",)
    readonly_fields = (
        "id",
        "received_at",
        "icid",
        "sender",
        "client_address",
        "client_helo",
        "auth_user",
        "message_id",
        "subject",
        "size",
        "state",
        "next_attempt_at",
        "finished_at",
        "bounce_of",
        "leased_by",
        "leased_until",
        "links",
        "log_lines",
    )
    fields = readonly_fields
    inlines = (RecipientInline, DeliveryAttemptInline)

    @admin.display(description="Pages")
    def links(self, obj: Message) -> SafeString:
        return format_html('<a href="{}">Message tracking</a>', reverse("delivery:message-detail", args=[obj.pk]))

    @admin.display(description="Mail log lines")
    def log_lines(self, obj: Message) -> SafeString:
        """The message's own lines, its ICID's and its DCIDs' (MailLogLine has no foreign key: it is a log)."""
        story = selectors.message_story(obj, max_lines=500)
        return format_html(
            '<pre class="maillog">{}</pre>',
            format_html_join("\n", "{} {}: {}", ((ln.at.strftime("%c"), ln.level, ln.text) for ln in story.lines)),
        )


@admin.register(Recipient)
class RecipientAdmin(ReadOnlyAdmin):
    list_display = ("message", "rid", "address", "domain", "state", "attempts", "next_attempt_at", "last_code")
    list_filter = ("state",)
    search_fields = ("address", "domain", "=message__id")
    list_select_related = ("message",)
    show_full_result_count = False
    readonly_fields = (
        "message",
        "rid",
        "address",
        "domain",
        "state",
        "next_attempt_at",
        "attempts",
        "last_code",
        "last_response",
        "last_host",
        "dsn_status",
        "finished_at",
    )
    inlines = (DeliveryAttemptInline,)


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ReadOnlyAdmin):
    list_display = ("at", "dcid", "message", "recipient", "host", "port", "outcome", "code", "response")
    list_filter = ("outcome", "at")
    search_fields = ("=dcid", "host", "=message__id", "recipient__address")
    list_select_related = ("message", "recipient")
    date_hierarchy = "at"
    show_full_result_count = False


@admin.register(HostStatus)
class HostStatusAdmin(ReadOnlyAdmin):
    list_display = (
        "host",
        "port",
        "down_until",
        "consecutive_failures",
        "last_error",
        "last_success_at",
        "connections_out",
        "delivered",
        "failed",
    )
    search_fields = ("host", "last_error")
    list_filter = ("port",)


@admin.register(IdCounter)
class IdCounterAdmin(ReadOnlyAdmin):
    list_display = ("name", "value")


class MailLogLineAdmin(ReadOnlyAdmin):
    list_display = ("id", "at", "level", "text", "mid", "icid", "dcid", "domain", "host")
    list_filter = ("level",)
    search_fields = ("=mid", "=icid", "=dcid", "domain", "host", "text")
    date_hierarchy = "at"
    show_full_result_count = False
    list_per_page = 200

    def get_queryset(self, request: HttpRequest) -> QuerySet[MailLogLine]:
        return super().get_queryset(request).order_by("-id")


admin.site.register(MailLogLine, MailLogLineAdmin)
