"""`GET /api/v1/hosts/` (the hosts page's rows and figures) and `GET /api/v1/domains/{domain}/` (the domain page:
`hoststatus`), over the selectors those pages use, so every number is the one the page shows."""

from __future__ import annotations

from typing import Any

from django.utils import timezone
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import exceptions, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from delivery import resolve
from delivery.models import DeliveryAttempt, DeliverySuspension, HostStatus
from delivery.monitor import counters, selectors
from esaroutes.api import errors, views
from routes import domains


class HostSerializer(serializers.ModelSerializer[HostStatus]):
    """One host:port as the hosts page shows it; `connections_out` is live (every worker's open connections)."""

    down = serializers.SerializerMethodField(help_text="marked down now (the page's status column)")
    consecutive_failures = serializers.IntegerField(help_text=counters.BY_KEY["host_failures"].counts)
    connections_out = serializers.IntegerField(help_text=counters.BY_KEY["connections_out"].counts)
    delivered = serializers.IntegerField(help_text=counters.BY_KEY["host_delivered"].counts)
    failed = serializers.IntegerField(help_text=counters.BY_KEY["host_failed"].counts)

    class Meta:
        model = HostStatus
        fields = [
            "id", "host", "port", "down", "down_until", "consecutive_failures", "last_error", "last_error_at",
            "last_success_at", "connections_out", "delivered", "failed",
        ]  # fmt: skip

    @extend_schema_field(bool)
    def get_down(self, status: HostStatus) -> bool:
        return selectors.host_down(status, self.context["now"])


class HostFilterSerializer(serializers.Serializer[Any]):
    q = serializers.CharField(required=False, allow_blank=True, max_length=255, help_text="host or last error contains")
    down = serializers.BooleanField(required=False, default=False, help_text="only the hosts down now")


class HostList(views.ApiView):
    """The hosts page (`delivery.monitor.views.host_list`): every destination host tried, keyset by id."""

    read_capability = "hosts.view"

    @extend_schema(parameters=[HostFilterSerializer], responses=HostSerializer(many=True))
    def get(self, request: Request) -> Response:
        query = HostFilterSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        now = timezone.now()
        rows = selectors.host_list(
            q=query.validated_data.get("q", "").strip(), down_at=now if query.validated_data["down"] else None
        )
        shown = selectors.with_live_connections(self.paginate_queryset(rows) or [])
        return self.get_paginated_response(HostSerializer(shown, many=True, context={"now": now}).data)


# --- GET /api/v1/domains/{domain}/ ------------------------------------------------------------------------------


class _Last5xx(serializers.ModelSerializer[DeliveryAttempt]):
    class Meta:
        model = DeliveryAttempt
        fields = ["at", "host", "port", "code", "response"]


class _Suspension(serializers.ModelSerializer[DeliverySuspension]):
    class Meta:
        model = DeliverySuspension
        fields = ["domain", "suspended_at", "suspended_by"]


class _Candidate(serializers.Serializer[Any]):
    order = serializers.IntegerField(allow_null=True, help_text="1 = tried first; null: skipped (down)")
    priority = serializers.IntegerField()
    host = serializers.CharField()
    port = serializers.IntegerField()
    via = serializers.CharField(help_text="the route host name this MX exchange stands for")
    skipped = serializers.BooleanField()
    status = HostSerializer(allow_null=True, help_text="null: never tried")


class _Route(serializers.Serializer[Any]):
    kind = serializers.ChoiceField(choices=[k.value for k in resolve.Kind])
    route_domain = serializers.CharField(help_text='the route that applies ("" when none)')
    rr_offset = serializers.IntegerField(help_text="the round-robin position the next connection starts at")
    hosts = _Candidate(many=True, help_text="in the order the next connection tries them, then those it skips")


class _Destination(serializers.Serializer[Any]):
    matched = serializers.CharField(help_text="the destination control entry that applies (Default when none)")
    max_connections = serializers.IntegerField()
    connections = serializers.IntegerField(help_text="connection slots in use now, by every worker")
    connections_by_ip = serializers.DictField(
        child=serializers.IntegerField(),
        help_text='limit scope "ip": the slots in use per connected address (empty in the domain scope)',
    )
    max_messages_per_connection = serializers.IntegerField()
    recipient_limit = serializers.IntegerField(allow_null=True)
    recipient_minutes = serializers.IntegerField(allow_null=True)
    limit_scope = serializers.CharField()
    recipients_in_window = serializers.IntegerField(allow_null=True, help_text="null: no recipient limit")
    recipients_in_window_by_ip = serializers.DictField(
        child=serializers.IntegerField(), help_text='limit scope "ip": the recipients in the window per address'
    )
    tls = serializers.CharField()
    ip_preference = serializers.CharField()
    bounce_profile = serializers.CharField()


class DomainStatusSerializer(serializers.Serializer[Any]):
    """The domain page (`hoststatus`): its counters and gauges (`delivery.monitor.counters`), hosts, route and
    destination control."""

    domain = serializers.CharField()
    up = serializers.BooleanField(allow_null=True, help_text="null: no connection yet")
    suspension = _Suspension(allow_null=True)
    soft_bounced = serializers.IntegerField(help_text=counters.BY_KEY["soft_bounced"].counts)
    completed = serializers.IntegerField(help_text=counters.BY_KEY["completed"].counts)
    hard_bounced = serializers.IntegerField(help_text=counters.BY_KEY["hard_bounced"].counts)
    hard_dns = serializers.IntegerField()
    hard_5xx = serializers.IntegerField()
    hard_expired = serializers.IntegerField()
    hard_other = serializers.IntegerField()
    delivered = serializers.IntegerField(help_text=counters.BY_KEY["delivered"].counts)
    deleted = serializers.IntegerField(help_text=counters.BY_KEY["deleted"].counts)
    dropped = serializers.IntegerField()
    active = serializers.IntegerField(help_text=counters.BY_KEY["active"].counts)
    unattempted = serializers.IntegerField()
    attempted = serializers.IntegerField()
    connections_out = serializers.IntegerField(help_text=counters.BY_KEY["connections_out"].counts)
    oldest = serializers.DateTimeField(allow_null=True)
    last_activity = serializers.DateTimeField(allow_null=True)
    hosts = HostSerializer(many=True, help_text="the hosts tried for this domain")
    last_5xx = _Last5xx(allow_null=True)
    route = _Route()
    destination = _Destination()


def _route(preview: resolve.Preview) -> dict[str, Any]:
    order = 0
    candidates = []
    for c in preview.candidates:
        order += not c.skipped
        candidates.append(
            {
                "order": None if c.skipped else order,
                "priority": c.host.priority,
                "host": c.host.address,
                "port": c.host.port,
                "via": c.via,
                "skipped": c.skipped,
                "status": c.status,
            }
        )
    where = preview.resolution
    return {
        "kind": where.kind.value,
        "route_domain": where.route_domain,
        "rr_offset": preview.rr_offset,
        "hosts": candidates,
    }


def _destination(dest: resolve.DestinationStatus) -> dict[str, Any]:
    limits = dest.limits
    return {
        "matched": dest.matched,
        "max_connections": limits.max_connections,
        "connections": dest.connections,
        "connections_by_ip": dict(dest.connections_by_ip),
        "max_messages_per_connection": limits.max_messages_per_connection,
        "recipient_limit": limits.recipient_limit,
        "recipient_minutes": limits.recipient_minutes,
        "limit_scope": limits.limit_scope,
        "recipients_in_window": dest.recipients,
        "recipients_in_window_by_ip": dict(dest.recipients_by_ip),
        "tls": dest.tls,
        "ip_preference": limits.ip_preference,
        "bounce_profile": dest.bounce_profile,
    }


class DomainStatus(views.ApiView):
    """The domain page (`delivery.monitor.views.domain_detail`, `hoststatus`): 404 when it says "No record of
    host"; USEDNS and unrouted domains are not looked up in DNS here, as on the page."""

    read_capability = "hosts.view"
    pagination_class = None

    @extend_schema(responses=DomainStatusSerializer)
    def get(self, request: Request, domain: str) -> Response:
        try:
            name = domains.to_ascii_name(domain.strip())  # Unicode or IDNA, as the queue stores it
        except ValueError as exc:
            raise errors.invalid("domain", f"{domain[:100]!r} is not a domain such as example.com: {exc}") from None
        now = timezone.now()
        status = selectors.domain_status(name, now)
        if status is None:
            raise exceptions.NotFound(f"No record of host: {name}")
        preview = resolve.preview(name, domain_mx=False, now=now)
        body = {**status, "route": _route(preview), "destination": _destination(preview.destination())}
        return Response(DomainStatusSerializer(body, context={"now": now}).data)
