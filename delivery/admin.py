"""The delivery models in the Django admin.

The queue's state is changed only by `delivery.spool` (one transaction, state + attempts + log lines), so the
admin shows messages, recipients, attempts, hosts and log lines read-only, and its actions call the same
functions as the operator pages and commands (`delivery.spool.actions`: deliver now, bounce, delete, mark host
up, suspend and resume delivery), for those who hold the capability (`queue.change`, `hosts.change`); bounce and
delete ask for confirmation first. Bounce profiles are editable, through `delivery.bounce_profiles` (audited, as
the API's changes are).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from delivery import bounce_profiles
from delivery.models import (
    BounceProfile,
    DeliveryAttempt,
    DeliverySuspension,
    HostStatus,
    IdCounter,
    MailLogLine,
    Message,
    Recipient,
)
from delivery.outbound import hosts
from delivery.spool import actions
from esaroutes import permissions
from esaroutes.admin import ReadOnlyAdmin, ViewOnly


class QueueActionAdmin(ReadOnlyAdmin):
    """Read-only, with actions that go through `delivery.spool.actions` for those who may change the queue or hosts."""

    def has_queue_permission(self, request: HttpRequest) -> bool:
        return permissions.can(request.user, "queue.change")

    def has_hosts_permission(self, request: HttpRequest) -> bool:
        return permissions.can(request.user, "hosts.change")

    def confirm(
        self, request: HttpRequest, queryset: QuerySet[Any], question: str, explain: str
    ) -> TemplateResponse | None:
        """None once confirmed; else the confirmation page, which posts the same action again with `confirm`."""
        if request.POST.get("confirm") == "yes":
            return None
        hidden = [(k, v) for k in request.POST for v in request.POST.getlist(k) if k != "csrfmiddlewaretoken"]
        context = {
            **self.admin_site.each_context(request),
            "title": question,
            "explain": explain,
            "objects": list(queryset[:50]),
            "more": max(0, queryset.count() - 50),
            "hidden": hidden,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "delivery/admin_confirm_action.html", context)

    def recipients_of(self, queryset: QuerySet[Any]) -> QuerySet[Recipient]:
        """The active recipients an action on these rows touches."""
        raise NotImplementedError

    def bounce(self, request: HttpRequest, queryset: QuerySet[Any]) -> TemplateResponse | None:
        return self._on_recipients(
            request, queryset, "Bounce", BOUNCE_EXPLAIN, actions.bounce_recipients, "bounced", "No messages bounced."
        )

    def delete(self, request: HttpRequest, queryset: QuerySet[Any]) -> TemplateResponse | None:
        return self._on_recipients(
            request, queryset, "Delete", DELETE_EXPLAIN, actions.delete_recipients, "deleted", "No recipients deleted."
        )

    def _on_recipients(
        self,
        request: HttpRequest,
        queryset: QuerySet[Any],
        verb: str,
        explain: str,
        act: Callable[..., int],
        done: str,
        none: str,
    ) -> TemplateResponse | None:
        """Confirm, then run `act` on the active recipients of these rows and say how many it touched."""
        recipients = self.recipients_of(queryset)
        page = self.confirm(request, recipients, f"{verb} these recipients?", explain)
        if page is None:
            n = act(recipients, actor=request.user)
            self.message_user(request, f"{n} recipient{'' if n == 1 else 's'} {done}." if n else none)
        return page


BOUNCE_EXPLAIN = "Each active recipient is hard-bounced now and a delivery status notification goes to its sender."
DELETE_EXPLAIN = "The active recipients leave the queue without a bounce: their senders are not told."
MAX_KICKS = 1000


class ReadOnlyInline(ViewOnly, admin.TabularInline[Any, Any]):
    extra = 0
    can_delete = False
    show_change_link = True


@admin.register(BounceProfile)
class BounceProfileAdmin(admin.ModelAdmin[BounceProfile]):
    """The rules are `BounceProfile.clean()`'s (run by the admin's form); the "Default" profile cannot be deleted."""

    list_display = bounce_profiles.FIELDS  # every setting, as the API answers them
    search_fields = ("name",)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        if obj is not None and obj.name == BounceProfile.DEFAULT_NAME:
            return False
        return super().has_delete_permission(request, obj)

    def save_model(self, request: HttpRequest, obj: BounceProfile, form: Any, change: bool) -> None:
        values = {name: getattr(obj, name) for name in bounce_profiles.FIELDS}  # the form's, already checked
        if change:
            saved = bounce_profiles.update(profile_id=obj.pk, changes=values, actor=request.user)
        else:
            saved = bounce_profiles.create(values=values, actor=request.user)
        obj.pk = saved.pk

    def delete_model(self, request: HttpRequest, obj: BounceProfile) -> None:
        bounce_profiles.delete(profile_id=obj.pk, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[BounceProfile]) -> None:
        if queryset.filter(name=BounceProfile.DEFAULT_NAME).exists():
            self.message_user(request, bounce_profiles.DEFAULT_PROTECTED, messages.WARNING)
        for pk in queryset.exclude(name=BounceProfile.DEFAULT_NAME).values_list("pk", flat=True):
            bounce_profiles.delete(profile_id=pk, actor=request.user)


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
class MessageAdmin(QueueActionAdmin):
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
    actions = ("deliver_now", "bounce_active", "delete_active")

    def recipients_of(self, queryset: QuerySet[Message]) -> QuerySet[Recipient]:
        return actions.select_recipients(mids=queryset.values_list("pk", flat=True))

    @admin.action(permissions=["queue"], description="Deliver now (send at once, not at the retry time)")
    def deliver_now(self, request: HttpRequest, queryset: QuerySet[Message]) -> None:
        mids = list(queryset.filter(state=Message.State.QUEUED).values_list("pk", flat=True)[: MAX_KICKS + 1])
        if len(mids) > MAX_KICKS:
            self.message_user(request, f"At most {MAX_KICKS} messages at a time.", messages.ERROR)
            return
        kicked = sum(actions.deliver_now(actor=request.user, mid=mid) for mid in mids)
        self.message_user(request, f"Rescheduled {kicked} message{'' if kicked == 1 else 's'} for immediate delivery.")

    @admin.action(permissions=["queue"], description="Bounce all active recipients of the selected messages")
    def bounce_active(self, request: HttpRequest, queryset: QuerySet[Message]) -> TemplateResponse | None:
        return self.bounce(request, queryset)

    @admin.action(permissions=["queue"], description="Delete all active recipients of the selected messages")
    def delete_active(self, request: HttpRequest, queryset: QuerySet[Message]) -> TemplateResponse | None:
        return self.delete(request, queryset)

    @admin.display(description="Pages")
    def links(self, obj: Message) -> SafeString:
        return format_html('<a href="{}">Message tracking</a>', reverse("delivery:message-detail", args=[obj.pk]))

    @admin.display(description="Mail log lines")
    def log_lines(self, obj: Message) -> SafeString:
        """The message's own lines, its ICID's and its DCIDs' (MailLogLine has no foreign key: it is a log)."""
        lines = obj.log_lines(500)
        return format_html(
            '<pre class="maillog">{}</pre>',
            format_html_join("\n", "{} {}: {}", ((ln.at.strftime("%c"), ln.level, ln.text) for ln in lines)),
        )


@admin.register(Recipient)
class RecipientAdmin(QueueActionAdmin):
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
    actions = ("bounce_selected", "delete_from_queue", "suspend_domains")

    def recipients_of(self, queryset: QuerySet[Recipient]) -> QuerySet[Recipient]:
        return actions.select_recipients(recipient_ids=queryset.values_list("pk", flat=True))

    @admin.action(permissions=["queue"], description="Bounce the selected recipients (if still active)")
    def bounce_selected(self, request: HttpRequest, queryset: QuerySet[Recipient]) -> TemplateResponse | None:
        return self.bounce(request, queryset)

    @admin.action(permissions=["queue"], description="Delete the selected recipients from the queue (no bounce)")
    def delete_from_queue(self, request: HttpRequest, queryset: QuerySet[Recipient]) -> TemplateResponse | None:
        return self.delete(request, queryset)

    @admin.action(permissions=["queue"], description="Suspend delivery to the selected recipients' domains")
    def suspend_domains(self, request: HttpRequest, queryset: QuerySet[Recipient]) -> None:
        domains = sorted(set(queryset.values_list("domain", flat=True)))
        new = actions.suspend_delivery(domains, actor=request.user)
        if new:
            self.message_user(request, f"Delivery suspended: {', '.join(new)}.", messages.SUCCESS)
        else:
            self.message_user(request, "Delivery was already suspended for those domains.", messages.WARNING)


@admin.register(DeliverySuspension)
class DeliverySuspensionAdmin(QueueActionAdmin):
    """The suspended destination domains (`suspenddel`); resuming goes through `delivery.spool.actions`."""

    list_display = ("domain", "suspended_at", "suspended_by")
    readonly_fields = ("domain", "suspended_at", "suspended_by")
    actions = ("resume",)

    @admin.action(permissions=["queue"], description="Resume delivery (send their queued mail now)")
    def resume(self, request: HttpRequest, queryset: QuerySet[DeliverySuspension]) -> None:
        resumed = actions.resume_delivery(list(queryset.values_list("domain", flat=True)), actor=request.user)
        self.message_user(request, f"Delivery resumed: {', '.join(resumed) or 'nothing'}.", messages.SUCCESS)


@admin.register(DeliveryAttempt)
class DeliveryAttemptAdmin(ReadOnlyAdmin):
    list_display = ("at", "dcid", "message", "recipient", "host", "port", "outcome", "code", "response")
    list_filter = ("outcome", "at")
    search_fields = ("=dcid", "host", "=message__id", "recipient__address")
    list_select_related = ("message", "recipient")
    date_hierarchy = "at"
    show_full_result_count = False


@admin.register(HostStatus)
class HostStatusAdmin(QueueActionAdmin):
    list_display = (
        "host",
        "port",
        "down_until",
        "consecutive_failures",
        "last_error",
        "last_success_at",
        "connections_now",
        "delivered",
        "failed",
    )
    search_fields = ("host", "last_error")
    list_filter = ("port",)
    actions = ("mark_up",)
    _live: dict[tuple[str, int], int] | None = None

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> Any:
        self._live = hosts.open_connections()  # once per page: the workers' live gauges, as the hosts page reads
        return super().changelist_view(request, extra_context)

    @admin.display(description="Connections out")
    def connections_now(self, obj: HostStatus) -> int:
        live = self._live if self._live is not None else hosts.open_connections()
        return live.get((obj.host, obj.port), 0)

    @admin.action(permissions=["hosts"], description="Mark host up (retry now: send its routes' queued mail)")
    def mark_up(self, request: HttpRequest, queryset: QuerySet[HostStatus]) -> None:
        kicked = sum(actions.mark_host_up(h.host, h.port, actor=request.user) for h in queryset[:MAX_KICKS])
        n = min(queryset.count(), MAX_KICKS)
        self.message_user(
            request,
            f"Marked {n} host{'' if n == 1 else 's'} up; {kicked} queued message{'' if kicked == 1 else 's'} sent now.",
        )


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
