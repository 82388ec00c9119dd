"""`/api/v1/queue/`: the queue page's destinations and recipients, and its actions, over `delivery.spool.actions`.

`POST /api/v1/queue/actions/` takes `action` (deliver-now, bounce, delete, suspend, resume, hold, release,
redirect) and a selection as `bouncerecipients` takes one: `mids`, `domain`, `sender` (together they narrow), or
`all: true`. With `dry_run: true` it answers what would be touched (the count and the first recipients) and
changes nothing. Suspend and resume take `domain` only ("ALL": every domain).
"""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from delivery import engine, resolve
from delivery.models import Recipient
from delivery.monitor import selectors
from delivery.spool import actions
from esaroutes import numbers
from esaroutes.api import errors, views
from routes import matching

SAMPLE = 50  # recipients a dry run lists
ACTIONS = ("deliver-now", "bounce", "delete", "suspend", "resume", "hold", "release", "redirect")


class QueueDestinationSerializer(serializers.Serializer[Any]):
    domain = serializers.CharField()
    active = serializers.IntegerField()
    delayed = serializers.IntegerField()
    oldest = serializers.DateTimeField(allow_null=True)
    next_attempt = serializers.DateTimeField(allow_null=True)
    suspended = serializers.BooleanField()


class QueuedRecipientSerializer(serializers.ModelSerializer[Recipient]):
    mid = serializers.IntegerField(source="message_id")
    sender = serializers.CharField(source="message.sender")
    received_at = serializers.DateTimeField(source="message.received_at")

    class Meta:
        model = Recipient
        fields = [
            "id", "mid", "rid", "address", "domain", "state", "held", "attempts", "next_attempt_at",
            "last_code", "last_response", "last_host", "sender", "received_at",
        ]  # fmt: skip


def _domain(text: str, field: str = "domain") -> str:
    domain = matching.recipient_domain(text.strip())
    if domain is None:
        raise errors.invalid(field, f"{text[:100]!r} is not a domain such as example.com")
    return domain


class QueueDestinations(views.ApiView):
    """The queue page's per-domain rows (`showrecipients`), oldest message first, with `suspended`."""

    read_capability = "queue.view"
    pagination_class = None  # one row per domain with queued mail: the whole list, as on the page

    @extend_schema(responses=QueueDestinationSerializer(many=True))
    def get(self, request: Request) -> Response:
        return Response(QueueDestinationSerializer(selectors.queue_domains(), many=True).data)


class QueueRecipients(views.ApiView):
    """Queued and delayed recipients, keyset by id; `?domain=` and `?sender=` (`""` is `<>`) narrow them."""

    read_capability = "queue.view"

    @extend_schema(
        parameters=[
            OpenApiParameter("domain", str, description="only this destination domain"),
            OpenApiParameter("sender", str, description='only this envelope sender ("" is <>)'),
        ],
        responses=QueuedRecipientSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        text = request.query_params.get("domain", "")
        rows = selectors.queue_recipients(_domain(text) if text.strip() else "")
        sender = request.query_params.get("sender")
        if sender is not None:
            rows = rows.filter(message__sender=sender[:998])
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(QueuedRecipientSerializer(page, many=True).data)


class QueueActionSerializer(serializers.Serializer[Any]):
    action = serializers.ChoiceField(choices=ACTIONS)
    mids = serializers.ListField(
        child=serializers.IntegerField(min_value=1, max_value=numbers.MAX_ID), required=False, max_length=1000
    )
    domain = serializers.CharField(required=False, max_length=255)
    sender = serializers.CharField(required=False, allow_blank=True, max_length=998, help_text='"" is <>')
    all = serializers.BooleanField(required=False, default=False, help_text="the whole queue")
    relay = serializers.CharField(
        required=False, allow_blank=True, max_length=300, help_text='redirect: HOST[:PORT]; "" cancels the redirect'
    )
    dry_run = serializers.BooleanField(required=False, default=False)


class QueueActionResultSerializer(serializers.Serializer[Any]):
    action = serializers.CharField()
    dry_run = serializers.BooleanField()
    recipients = serializers.IntegerField(help_text="recipients chosen (dry run) or changed")
    messages = serializers.IntegerField(help_text="messages chosen (dry run) or kicked (deliver-now)")
    ids = serializers.ListField(child=serializers.IntegerField(), help_text="dry run: the first recipients' ids")
    mids = serializers.ListField(child=serializers.IntegerField(), help_text="dry run: their MIDs")
    domains = serializers.ListField(child=serializers.CharField(), help_text="suspend/resume: the domains changed")


class QueueActions(views.ApiView):
    write_capability = "queue.change"

    @extend_schema(request=QueueActionSerializer, responses=QueueActionResultSerializer)
    def post(self, request: Request) -> Response:
        data = QueueActionSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        d = data.validated_data
        action: str = d["action"]
        domain: str | None = None
        if "domain" in d:
            everywhere = action in ("suspend", "resume") and d["domain"].strip().upper() == engine.SUSPEND_ALL
            domain = engine.SUSPEND_ALL if everywhere else _domain(d["domain"])
        if action in ("suspend", "resume"):
            if domain is None:
                raise errors.invalid("domain", f"{action} takes a domain (or ALL)")
            return self._suspension(action, domain, dry_run=d["dry_run"], request=request)
        relay: tuple[str, int] | None = None
        if action == "redirect":
            if "relay" not in d:
                raise errors.invalid("relay", 'Give the host to redirect to (HOST[:PORT]), or "" to cancel')
            if d["relay"].strip():
                try:
                    relay = resolve.parse_relay(d["relay"].strip())
                except ValueError as exc:
                    raise errors.invalid("relay", str(exc)) from None
        selection: dict[str, Any] = {"mids": d.get("mids"), "domain": domain, "sender": d.get("sender")}
        if all(v is None for v in selection.values()) and not d["all"]:
            raise errors.invalid(None, "Choose the recipients: mids, domain, sender, or all: true")
        chosen = actions.select_recipients(**selection, everything=d["all"])
        if d["dry_run"]:
            return Response(_dry_run(action, chosen))
        actor = views.actor(request)
        messages = 0
        if action == "deliver-now":
            n, messages = selectors.selection_size(chosen)
            if selection["mids"] is None and selection["sender"] is None:
                messages = actions.deliver_now(actor=actor, domain=domain)
            else:
                mids = sorted(set(chosen.values_list("message_id", flat=True)))
                messages = sum(actions.deliver_now(actor=actor, mid=mid, domain=domain) for mid in mids)
        elif action == "bounce":
            n = actions.bounce_recipients(chosen, actor=actor)
        elif action == "delete":
            n = actions.delete_recipients(chosen, actor=actor)
        elif action == "hold":
            n = actions.hold_recipients(chosen, actor=actor)
        elif action == "release":
            n = actions.release_recipients(chosen, actor=actor)
        else:
            n = actions.redirect_recipients(chosen, relay, actor=actor)
        return Response(_result(action, recipients=n, messages=messages))

    def _suspension(self, action: str, domain: str, *, dry_run: bool, request: Request) -> Response:
        if dry_run:
            chosen = actions.select_recipients(everything=True) if domain == engine.SUSPEND_ALL else None
            return Response(_dry_run(action, chosen or actions.select_recipients(domain=domain), domains=[domain]))
        call = actions.suspend_delivery if action == "suspend" else actions.resume_delivery
        return Response(_result(action, domains=call([domain], actor=views.actor(request))))


def _result(action: str, *, recipients: int = 0, messages: int = 0, domains: list[str] | None = None) -> dict[str, Any]:
    body = {"action": action, "dry_run": False, "recipients": recipients, "messages": messages}
    return {**body, "ids": [], "mids": [], "domains": domains or []}


def _dry_run(action: str, chosen: QuerySet[Recipient], domains: list[str] | None = None) -> dict[str, Any]:
    recipients, messages = selectors.selection_size(chosen)
    sample = list(chosen.order_by("message__received_at", "message_id", "rid").values_list("pk", "message_id")[:SAMPLE])
    return {
        "action": action,
        "dry_run": True,
        "recipients": recipients,
        "messages": messages,
        "ids": [pk for pk, _ in sample],
        "mids": list(dict.fromkeys(mid for _, mid in sample)),
        "domains": domains or [],
    }
