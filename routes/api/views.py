"""`/api/v1/routes/`: list (the page's search and kinds, keyset pages), read, create, replace, change, delete,
the route test (with the optional EHLO probe), import (with a dry run answering the host-level diff) and export.

A route's `destination` is a list as on the page's host table: `host[:port][/pri=N][/weight=N]` strings (the
ESA syntax, `[name]` for A/AAAA only), or `["USEDNS"]` / `["/dev/null"]` alone. Every write goes through
`routes.services` (validated by `routes.domains`, audited with the token's name); errors name their field,
`destination.N` for the Nth host.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import QuerySet
from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import exceptions, parsers, serializers
from rest_framework.request import Request
from rest_framework.response import Response

from delivery.models import BounceProfile
from esaroutes.api import conditional, errors, views
from routes import domains, importexport, matching, probe, services
from routes import forms as route_forms
from routes import views as pages
from routes.models import AuthProfile, Route

TLS_CHOICES = [choice for choice, _ in Route.TLS.choices]


def destination_of(route: Route) -> list[str]:
    destination = services.route_destination(route)
    if isinstance(destination, domains.Special):
        return [destination.value]
    return [spec.format() for spec in destination]


class RouteSerializer(serializers.Serializer[Route]):
    """What a route reads as: its stored (ASCII) domain, as people read it, and the page's fields."""

    id = serializers.IntegerField(read_only=True)
    domain = serializers.CharField(read_only=True)
    display_domain = serializers.SerializerMethodField()
    destination = serializers.SerializerMethodField()
    auth_profile = serializers.IntegerField(source="auth_profile_id", read_only=True, allow_null=True)
    bounce_profile = serializers.IntegerField(source="bounce_profile_id", read_only=True, allow_null=True)
    tls = serializers.ChoiceField(choices=TLS_CHOICES, read_only=True)
    defer_on_4xx = serializers.BooleanField(read_only=True)
    fallback_relay = serializers.CharField(read_only=True)
    sender = serializers.CharField(read_only=True)
    source_address = serializers.CharField(read_only=True)
    ehlo_name = serializers.CharField(read_only=True)
    updated_at = serializers.DateTimeField(read_only=True)

    def get_display_domain(self, route: Route) -> str:
        return domains.display_domain(route.domain)

    def get_destination(self, route: Route) -> list[str]:
        return destination_of(route)


class RouteInputSerializer(serializers.Serializer[Any]):
    domain = serializers.CharField(max_length=300, help_text="example.com, .example.com (subdomains) or ALL")
    destination = serializers.ListField(
        child=serializers.CharField(max_length=300),
        min_length=1,
        max_length=100,
        help_text='hosts as "host[:port][/pri=N][/weight=N]", or ["USEDNS"] or ["/dev/null"] alone',
    )
    auth_profile = serializers.PrimaryKeyRelatedField(queryset=AuthProfile.objects.all(), allow_null=True, default=None)
    bounce_profile = serializers.PrimaryKeyRelatedField(
        queryset=BounceProfile.objects.all(), allow_null=True, default=None
    )
    tls = serializers.ChoiceField(choices=TLS_CHOICES, default=Route.TLS.OPPORTUNISTIC)
    defer_on_4xx = serializers.BooleanField(default=False)
    fallback_relay = serializers.CharField(max_length=300, allow_blank=True, default="")
    sender = serializers.CharField(
        max_length=320,
        allow_blank=True,
        default="",
        help_text='envelope sender pattern: an address, a domain, a .partial domain or "<>"; "" for every sender',
    )
    source_address = serializers.CharField(
        max_length=45, allow_blank=True, default="", help_text='an address of this machine; "" for the setting'
    )
    ehlo_name = serializers.CharField(
        max_length=255, allow_blank=True, default="", help_text='the EHLO name; "" for the setting'
    )


def parse_destination(items: list[str]) -> domains.Destination:
    """The destination of the request's list; problems at `destination.N`."""
    if len(items) == 1 and items[0].strip().upper() == "USEDNS":
        return domains.Special.USEDNS
    if len(items) == 1 and items[0].strip() == "/dev/null":
        return domains.Special.DEVNULL
    specs: list[domains.HostSpec] = []
    problems: dict[str, list[str]] = {}
    for index, text in enumerate(items):
        try:
            specs.append(domains.parse_host(text))
        except domains.HostListError as exc:
            problems[f"destination.{index}"] = [str(exc)]
    if problems:
        raise serializers.ValidationError(problems)
    return specs


def route_fields(validated: dict[str, Any]) -> dict[str, Any]:
    """The body's fields (those given) by `services.RouteData`'s names: the destination parsed, the profiles as ids."""
    fields = views.with_ids(validated, "auth_profile", "bounce_profile")
    if "destination" in fields:
        fields["destination"] = parse_destination(fields["destination"])
    return fields


def route_problems(exc: services.RouteInvalid) -> dict[str, list[str]]:
    """Where a refused route is wrong, by field: `destination.N` for the Nth host."""
    if isinstance(exc, services.SenderInvalid):
        return {"sender": [exc.message]}
    problems: dict[str, list[str]] = {}
    if exc.problems.domain:
        problems["domain"] = exc.problems.domain
    for message in exc.problems.route:
        field, text = route_forms.route_problem_field(message)
        problems.setdefault(field or "destination", []).append(text)
    for index, messages in exc.problems.hosts.items():
        problems[f"destination.{index}"] = messages
    return problems or {"non_field_errors": [str(exc)]}


class _Routes(views.RowsView):
    read_capability = "routes.view"
    write_capability = "routes.change"
    serializer_class = RouteSerializer
    input_class = RouteInputSerializer

    def rows(self) -> QuerySet[Route]:
        return Route.objects.select_related("auth_profile", "bounce_profile").prefetch_related("hosts")


@extend_schema_view(
    get=extend_schema(
        parameters=[
            OpenApiParameter("q", str, description="domain or host contains (Unicode or punycode)"),
            OpenApiParameter("kind", str, enum=list(pages.KINDS), description="as the page's filter"),
        ]
    )
)
class RouteList(_Routes, views.CollectionView):
    def listed(self) -> QuerySet[Route]:
        kind = self.request.query_params.get("kind", "all")
        if kind not in pages.KINDS:
            raise errors.invalid("kind", f"use one of {', '.join(pages.KINDS)}")
        routes = Route.objects.filter(pages.KINDS[kind])
        q = self.request.query_params.get("q", "").strip()[:300]
        if q:
            routes = routes.filter(pages._search(q))
        return routes.select_related("auth_profile").prefetch_related("hosts")

    def create(self, request: Request, data: dict[str, Any]) -> Route:
        with errors.refused(services.RouteInvalid, route_problems):
            return services.route_create(data=services.RouteData(**route_fields(data)), actor=views.actor(request))


class RouteDetail(_Routes, views.ObjectView):
    def change(self, request: Request, obj: Route, data: dict[str, Any], *, partial: bool) -> None:
        # A PUT's body has every field (the defaults fill in); a PATCH's only those it changes.
        changed = dataclasses.replace(services.RouteData.of(obj), **route_fields(data))
        with errors.refused(services.RouteInvalid, route_problems):
            services.route_update(route_id=obj.pk, data=changed, actor=views.actor(request))

    def remove(self, request: Request, obj: Route) -> None:
        services.routes_delete(route_ids=[obj.pk], actor=views.actor(request))


class RouteTestInput(serializers.Serializer[Any]):
    address = serializers.CharField(max_length=320, help_text="a recipient address, or a domain")
    probe = serializers.BooleanField(default=False, help_text="open an SMTP connection to each host (EHLO, QUIT)")


class RouteTest(views.ApiView):
    """Where mail to an address goes now, host by host in delivery's order; with `probe`, each host's EHLO."""

    read_capability = "routes.view"
    write_capability = "routes.view"  # a POST here changes nothing; the probe itself needs routes.change

    @extend_schema(request=RouteTestInput, responses=OpenApiTypes.OBJECT)
    def post(self, request: Request) -> Response:
        body = RouteTestInput(data=request.data)
        body.is_valid(raise_exception=True)
        address = body.validated_data["address"].strip()
        problem = matching.address_problem(address)
        if problem:
            raise errors.invalid("address", problem)
        if body.validated_data["probe"] and not request.user.has_perm("routes.change_route"):
            raise exceptions.PermissionDenied("opening SMTP connections needs the permission to change routes")
        plan = pages._plan(address)
        entry = plan.get("entry")
        hosts = plan.get("hosts", [])
        answer: dict[str, Any] = {
            "address": address,
            "domain": plan.get("domain"),
            "route": entry.domain if entry is not None else None,
            "special": (entry.special or None) if entry is not None else None,
            "table_version": plan["table_version"],
            "hosts": [
                {
                    "host": h.spec.host,
                    "port": h.spec.port,
                    "priority": h.spec.priority,
                    "weight": h.spec.weight,
                    "down_until": h.down_until,
                    "last_error": h.last_error,
                    "skipped": h.skipped,
                    "via": h.via,
                }
                for h in hosts
            ],
        }
        if body.validated_data["probe"] and hosts:
            results = asyncio.run(
                probe.probe_all(
                    [(h.spec.host, h.spec.port) for h in hosts],
                    helo=settings.ESAROUTES_HOSTNAME,
                    seconds=pages.PROBE_TIMEOUT,
                    networks=settings.ESAROUTES_DELIVERY_ALLOWED_NETWORKS,
                )
            )
            for row, result in zip(answer["hosts"], results, strict=True):
                row["probe"] = {"ok": result.ok, "lines": list(result.lines), "seconds": round(result.seconds, 3)}
        return Response(answer)


def table_version() -> dict[str, int]:
    """What the table's ETag digests: its version, which every route write bumps."""
    return {"route_table_version": services.current_version()}


def table_etag() -> str:
    return conditional.etag(table_version())


class RouteExport(views.ApiView):
    """The whole table in the ESA's text format (what `smtproutes export` and the page's export write)."""

    read_capability = "routes.view"

    @extend_schema(responses={(200, "text/plain"): OpenApiResponse(OpenApiTypes.STR)})
    def get(self, request: Request) -> HttpResponse:
        response = HttpResponse(services.export_text(now=timezone.now()), content_type="text/plain; charset=utf-8")
        response["ETag"] = table_etag()  # the If-Match an import expects
        return response


class PlainTextParser(parsers.BaseParser):
    media_type = "text/plain"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> dict[str, bytes]:
        return {"text": bytes(stream.read()) if stream is not None else b""}


class ImportSerializer(serializers.Serializer[Any]):
    mode = serializers.ChoiceField(choices=["replace", "merge"])
    dry_run = serializers.BooleanField()
    version = serializers.IntegerField()
    added = serializers.ListField(child=serializers.CharField())
    changed = serializers.ListField(child=serializers.CharField())
    removed = serializers.ListField(child=serializers.CharField())
    unchanged = serializers.IntegerField()
    hosts = serializers.DictField(child=serializers.ListField(child=serializers.DictField()), required=False)
    default_warning = serializers.CharField(required=False)


class RouteImport(views.ApiView):
    """Import a routes file (the export format, `text/plain`): `?mode=replace` (the table becomes the file) or
    `merge`; `?dry_run=1` answers what would change, route by route and host by host, and changes nothing.
    Applying needs `If-Match` with the table's ETag (from the export or the dry run): 412 if it changed since."""

    read_capability = "routes.change"
    write_capability = "routes.change"
    parser_classes = [PlainTextParser]
    max_body_bytes = importexport.MAX_FILE_BYTES

    @extend_schema(
        parameters=[
            OpenApiParameter("mode", str, enum=["replace", "merge"], default="replace"),
            OpenApiParameter("dry_run", bool, default=False),
        ],
        request={"text/plain": OpenApiTypes.STR},
        responses=ImportSerializer,
    )
    def post(self, request: Request) -> Response:
        mode = request.query_params.get("mode", "replace")
        if mode not in ("replace", "merge"):
            raise errors.invalid("mode", "use replace or merge")
        dry_run = request.query_params.get("dry_run", "0").lower() in ("1", "true", "yes")
        data = request.data.get("text", b"")  # PlainTextParser, the only parser here
        parsed = importexport.parse_bytes(data)
        if not parsed.ok:
            raise serializers.ValidationError({"body": parsed.errors[:100]})  # each names its line
        if dry_run:
            preview = services.import_preview(parsed.routes(), mode)  # type: ignore[arg-type]
            response = Response(
                {
                    "mode": mode,
                    "dry_run": True,
                    "version": services.current_version(),
                    "added": list(preview.added),
                    "changed": list(preview.changed),
                    "removed": list(preview.removed),
                    "unchanged": preview.unchanged,
                    "hosts": {d: [vars(c) for c in changes] for d, changes in preview.hosts.items()},
                    "default_warning": preview.default_warning,
                }
            )
            response["ETag"] = table_etag()
            return response
        with transaction.atomic():
            conditional.require_match(request, table_version())
            summary = services.routes_import(incoming=parsed.routes(), mode=mode, actor=views.actor(request))  # type: ignore[arg-type]
        response = Response(
            {
                "mode": mode,
                "dry_run": False,
                "version": summary.version or services.current_version(),
                "added": list(summary.added),
                "changed": list(summary.changed),
                "removed": list(summary.removed),
                "unchanged": summary.unchanged,
            }
        )
        response["ETag"] = table_etag()
        return response
