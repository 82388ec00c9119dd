"""SMTP routes in the browser: list and search, add/edit with a host table, delete, clear, test, import, export.

Views are thin: they read with plain queries, validate with `routes.forms` (which uses `routes.domains`) and write
only through `routes.services`. htmx requests get the page's partial (`template.html#partial-name`, the partial's
root id is its hx-target); an invalid form comes back with status 422.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import permission_required
from django.core.exceptions import BadRequest, PermissionDenied
from django.core.paginator import Page, Paginator
from django.db.models import Q, prefetch_related_objects
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from delivery import resolve
from delivery.listener import sendtest
from esaroutes import htmx, numbers
from esaroutes.types import AuthedHtmxRequest
from routes import destinations as destination_controls
from routes import domains, forms, importexport, matching, probe, services, snapshot
from routes.models import DefaultDestinationProtected, DestinationControl, DestinationHost, Route

PER_PAGE = 50
SORTS = {
    "domain": ("domain",),
    "-domain": ("-domain",),
    "updated": ("updated_at", "domain"),
    "-updated": ("-updated_at", "domain"),
}
KINDS = {
    "all": Q(),
    "exact": ~Q(domain__startswith=".") & Q(special=""),
    "partial": Q(domain__startswith=".") & Q(special=""),
    "special": ~Q(special=""),
    "auth": Q(auth_profile__isnull=False),
    "sender": ~Q(sender=""),
}
IMPORT_TTL = timedelta(hours=1)
PROBE_TIMEOUT = 5.0  # seconds for each host's EHLO probe on the route test page

can_view = permission_required("routes.view_route", raise_exception=True)
can_add = permission_required("routes.add_route", raise_exception=True)
can_change = permission_required("routes.change_route", raise_exception=True)
can_delete = permission_required("routes.delete_route", raise_exception=True)
can_view_destinations = permission_required("routes.view_destinationcontrol", raise_exception=True)
can_add_destination = permission_required("routes.add_destinationcontrol", raise_exception=True)
can_change_destination = permission_required("routes.change_destinationcontrol", raise_exception=True)
can_delete_destination = permission_required("routes.delete_destinationcontrol", raise_exception=True)


# ---------------------------------------------------------------------------------------------------------------
# List


@require_GET
@can_view
@htmx.without_empty_params
def route_list(request: AuthedHtmxRequest) -> HttpResponse:
    q = request.GET.get("q", "").strip()[:300]
    sort = request.GET.get("sort", "domain")
    sort = sort if sort in SORTS else "domain"
    kind = request.GET.get("kind", "all")
    kind = kind if kind in KINDS else "all"
    routes = Route.objects.exclude(domain=domains.DEFAULT_ROUTE, sender="").filter(KINDS[kind])
    if q:
        routes = routes.filter(_search(q))
    routes = routes.select_related("auth_profile").order_by(*SORTS[sort])
    page: Page[Any]
    if sort in ("domain", "-domain") and routes.filter(domain__contains="xn--").exists():
        ids = _by_unicode_domain(routes, descending=sort == "-domain")
        page = Paginator(ids, PER_PAGE).get_page(request.GET.get("page"))
        by_pk = Route.objects.select_related("auth_profile").in_bulk(list(page.object_list))
        rows = [by_pk[pk] for pk in page.object_list if pk in by_pk]
    else:
        page = Paginator(routes, PER_PAGE).get_page(request.GET.get("page"))
        rows = list(page.object_list)
    prefetch_related_objects(rows, "hosts")  # this page's hosts only: one query
    default = (
        Route.objects.select_related("auth_profile").prefetch_related("hosts").filter(domain="ALL", sender="").first()
    )
    context = {
        "page": page,
        "routes": rows,
        "default_route": default,
        "q": q,
        "sort": sort,
        "kind": kind,
        "kinds": [
            ("all", "All"),
            ("exact", "Exact"),
            ("partial", "Partial"),
            ("special", "USEDNS or /dev/null"),
            ("auth", "With SMTP AUTH"),
            ("sender", "By sender"),
        ],
        "query": _query(q=q, sort=sort, kind=kind),
        "total": Route.objects.count(),
    }
    return htmx.render(request, "routes/route_list.html", "route-table", context)


def _by_unicode_domain(routes: Any, *, descending: bool) -> list[int]:
    """The routes' ids in the order of their domains as people read them (`bücher.example` among the b's, not
    among the x's of its stored `xn--bcher-kva.example`): one query of (id, domain), sorted here."""
    pairs = list(routes.values_list("pk", "domain"))
    pairs.sort(key=lambda pair: (domains.display_domain(pair[1]).casefold(), pair[1]), reverse=descending)
    return [pk for pk, _ in pairs]


def _search(q: str) -> Q:
    """Routes whose domain, sender pattern or one of whose hosts contains the text (Unicode or punycode)."""
    terms = {q.lower()}
    with contextlib.suppress(ValueError, UnicodeError):
        terms.add(domains.to_ascii_name(q.strip(".")).lower())
    condition = Q()
    for term in terms:
        hosts = DestinationHost.objects.filter(host__contains=term).values("route_id")
        condition |= Q(domain__contains=term) | Q(sender__contains=term) | Q(pk__in=hosts)
    return condition


def _query(**params: str) -> str:
    return urlencode(
        {
            k: v
            for k, v in params.items()
            if v and not (k == "sort" and v == "domain") and not (k == "kind" and v == "all")
        }
    )


# ---------------------------------------------------------------------------------------------------------------
# Add and edit


@require_http_methods(["GET", "POST"])
@can_add
def route_add(request: AuthedHtmxRequest) -> HttpResponse:
    domain = request.GET.get("domain", "")
    editor = forms.RouteEditor(request.POST if request.method == "POST" else None)
    if request.method == "GET" and domain:
        editor.form.initial["domain"] = domain
    return _save(request, editor, None)


@require_http_methods(["GET", "POST"])
@can_change
def route_edit(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    route = get_object_or_404(Route.objects.prefetch_related("hosts"), pk=pk)
    editor = forms.RouteEditor(request.POST if request.method == "POST" else None, route=route)
    return _save(request, editor, route)


def _label(route: Route) -> str:
    """A route as people read it: `bücher.example`, `example.com from alerts@app.example`."""
    shown = domains.display_domain(route.domain)
    return f"{shown} from {matching.display_sender(route.sender)}" if route.sender else shown


def _save(request: AuthedHtmxRequest, editor: forms.RouteEditor, route: Route | None) -> HttpResponse:
    template = htmx.partial_or_page(request, "routes/route_form.html", "route-form")
    context = {"editor": editor, "route": route}
    if request.method != "POST":
        return render(request, "routes/route_form.html", context)
    if editor.is_valid() and editor.data is not None:
        try:
            if route is None:
                saved = services.route_create(data=editor.data, actor=request.user)
                messages.success(request, f"Route {_label(saved)} added.")
            else:
                saved = services.route_update(route_id=route.pk, data=editor.data, actor=request.user)
                messages.success(request, f"Route {_label(saved)} saved.")
        except services.RouteInvalid as exc:
            editor.apply_problems(exc.problems)
        else:
            return htmx.go_to(request, "routes:route-list")
    return render(request, template, context, status=422)


@require_GET
@can_view
def host_row(request: AuthedHtmxRequest) -> HttpResponse:
    """One more empty host row for the add/edit table, and the formset's TOTAL_FORMS counter out of band."""
    try:
        index = int(request.GET.get(f"{forms.RouteEditor.prefix}-TOTAL_FORMS", "0"))
    except ValueError:
        raise BadRequest("the host row count is not a number") from None  # only a hand-made request: the 400 page
    if not 0 <= index < domains.MAX_HOSTS_PER_ROUTE * 2:
        raise BadRequest("too many host rows")
    initial = {"priority": "0", "port": "25", "weight": "1"}
    row = forms.HostRowForm(prefix=f"{forms.RouteEditor.prefix}-{index}", initial=initial)
    return render(
        request,
        "routes/_host_row.html",
        {"row": row, "total": index + 1, "prefix": forms.RouteEditor.prefix, "oob": True},
    )


# ---------------------------------------------------------------------------------------------------------------
# Delete and clear


@require_http_methods(["GET", "POST"])
@can_delete
def route_delete(request: AuthedHtmxRequest) -> HttpResponse:
    source = request.POST if request.method == "POST" else request.GET
    ids = [i for i in map(numbers.whole, source.getlist("ids")) if i is not None][: PER_PAGE * 20]
    routes = list(Route.objects.filter(pk__in=ids).order_by("domain"))
    if request.method == "POST" and routes:
        deleted = services.routes_delete(route_ids=[r.pk for r in routes], actor=request.user)
        messages.success(request, f"Deleted {len(deleted)} route{'s' if len(deleted) != 1 else ''}.")
        return redirect("routes:route-list")
    if not routes:
        messages.info(request, "Select the routes to delete first.")
        return redirect("routes:route-list")
    return render(request, "routes/route_delete.html", {"routes": routes})


@require_http_methods(["GET", "POST"])
@can_delete
def routes_clear(request: AuthedHtmxRequest) -> HttpResponse:
    if request.method == "POST":
        count = services.routes_clear(actor=request.user)
        messages.success(request, f"Cleared the route table ({count} routes deleted).")
        return redirect("routes:route-list")
    return render(request, "routes/routes_clear.html", {"count": Route.objects.count()})


# ---------------------------------------------------------------------------------------------------------------
# Test route


@dataclass(frozen=True)
class PlannedHost:
    spec: domains.HostSpec
    down_until: Any = None
    last_error: str = ""
    skipped: bool = False
    via: str = ""  # the route host name this MX exchange stands for

    @property
    def label(self) -> str:
        return self.spec.format()


@require_http_methods(["GET", "POST"])
@can_view
def route_test(request: AuthedHtmxRequest) -> HttpResponse:
    source = request.POST if request.method == "POST" else request.GET
    address = source.get("address", "").strip()[:320]
    sender = source.get("sender", "").strip()[:320]
    context: dict[str, Any] = {"address": address, "sender": sender}
    problem = matching.address_problem(address) if address else None
    sender_problem = _sender_problem(sender)
    if problem or sender_problem:
        context["address_error"] = problem
        context["sender_error"] = sender_problem
        return htmx.render(request, "routes/route_test.html", "test-result", context, status=422)
    if address:
        context.update(_plan(address, sender or None))
        context["rows"] = [(p, None) for p in context.get("hosts", [])]
        if request.method == "POST" and source.get("connect") and context.get("hosts"):
            if not request.user.has_perm("routes.change_route"):
                raise PermissionDenied("opening SMTP connections needs the permission to change routes")
            targets = [(p.spec.host, p.spec.port) for p in context["hosts"]]
            context["probes"] = asyncio.run(
                probe.probe_all(
                    targets,
                    helo=settings.ESAROUTES_HOSTNAME,
                    seconds=PROBE_TIMEOUT,
                    networks=settings.ESAROUTES_DELIVERY_ALLOWED_NETWORKS,
                )
            )
            context["rows"] = list(zip(context["hosts"], context["probes"], strict=True))
    return htmx.render(request, "routes/route_test.html", "test-result", context)


def _sender_problem(sender: str) -> str | None:
    """Why the route tester's Sender is not an envelope sender: empty (no sender) and `<>` are fine."""
    if not sender or sender.replace(" ", "") == matching.NULL_SENDER:
        return None
    problem = matching.address_problem(sender)
    return problem.replace("user@example.com", "alerts@app.example, or <> for the null sender") if problem else None


def _plan(address: str, sender: str | None = None) -> dict[str, Any]:
    domain = matching.recipient_domain(address)
    table = snapshot.current_table(max_age=0)
    entry = table.lookup(address, sender)
    plan: dict[str, Any] = {
        "domain": domain,
        "entry": entry,
        "table_version": table.version,
        "fallback": resolve.fallback_for(entry),
    }
    if domain:  # the destination control that applies, with the shared counts now (delivery.slots)
        where = resolve.Resolver(table, dns=False).resolve(domain, sender)
        plan["destination"] = resolve.destination_status(domain, where, table)
    if entry is None:
        return plan
    plan["display"] = (
        "All other domains" if entry.domain == domains.DEFAULT_ROUTE else domains.display_domain(entry.domain)
    )
    if entry.special:
        return plan
    # The order delivery's next connection uses (delivery.resolve: MX exchanges of route host names included),
    # then the hosts it leaves out (down while another host is up), flagged.
    now = timezone.now()
    preview = resolve.preview(domain or address, table=table, now=now, sender=sender)
    specs = {(h.host, h.port): h for h in entry.hosts}
    spec = domains.HostSpec
    plan["hosts"] = [
        PlannedHost(
            spec=specs.get(c.host.key) or spec(c.host.address, c.host.port, c.host.priority, weight=c.host.weight),
            down_until=c.down_until if c.down(now) else None,
            last_error=c.last_error if c.down(now) else "",
            skipped=c.skipped,
            via=c.via,
        )
        for c in preview.candidates
    ]
    return plan


@require_POST
@can_change
def route_send_test(request: AuthedHtmxRequest) -> HttpResponse:
    address = request.POST.get("address", "").strip()[:320]
    if not address:
        ctx = {"send_result": "Not sent: enter the address to send the test message to."}
        return render(request, "routes/route_test.html#send-result", ctx, status=422)
    problem = matching.address_problem(address)
    if problem:
        return render(
            request, "routes/route_test.html#send-result", {"send_result": f"Not sent: {problem}"}, status=422
        )
    sender = request.POST.get("sender", "").strip()[:320]
    sender_problem = _sender_problem(sender)
    if sender_problem:
        ctx = {"send_result": f"Not sent: the sender: {sender_problem}"}
        return render(request, "routes/route_test.html#send-result", ctx, status=422)
    from_address = None if not sender else "" if sender.replace(" ", "") == matching.NULL_SENDER else sender
    try:  # from the page's Sender when one was typed, so the message follows the sender route the page shows
        result = sendtest.send_test_message(address, sender=from_address)
    except Exception as exc:  # the listener's errors are shown to the admin, not turned into a 500
        text = f"Not sent: {exc}"
    else:
        text = f"Test message queued for {address}" + (f" ({result})" if result else ".")
    return render(request, "routes/route_test.html#send-result", {"send_result": text})


# ---------------------------------------------------------------------------------------------------------------
# Export and import


@require_GET
@can_view
def routes_export(request: AuthedHtmxRequest) -> HttpResponse:
    now = timezone.now()
    response = HttpResponse(services.export_text(now=now), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="smtp-routes-{now:%Y%m%dT%H%M%S}.txt"'
    return response


@require_http_methods(["GET", "POST"])
@can_change
def routes_import(request: AuthedHtmxRequest) -> HttpResponse:
    """Upload → preview (nothing changes) → confirm (applied all or nothing, one audit entry)."""
    if request.method == "GET":
        return render(request, "routes/route_import.html", {"mode": "replace"})
    mode: services.ImportMode = "merge" if request.POST.get("mode") == "merge" else "replace"
    token = request.POST.get("token", "")
    template = htmx.partial_or_page(request, "routes/route_import.html", "import-preview")
    if token:  # the confirmation
        data = _stored_upload(token)
        if data is None:
            return render(
                request, template, {"mode": mode, "errors": ["The preview expired: upload the file again."]}, status=422
            )
        parsed = importexport.parse_bytes(data)
        if not parsed.ok:
            return render(request, template, {"mode": mode, "errors": parsed.errors}, status=422)
        if request.POST.get("version") != str(services.current_version()):
            preview = services.import_preview(parsed.routes(), mode)
            context: dict[str, Any] = {
                "mode": mode,
                "preview": preview,
                "token": token,
                "version": services.current_version(),
                "stale": True,
                "count": len(parsed.rows),
            }
            return render(request, template, context, status=409)
        summary = services.routes_import(incoming=parsed.routes(), mode=mode, actor=request.user)
        _drop_upload(token)
        messages.success(
            request,
            f"Imported ({mode}): {len(summary.added)} added, {len(summary.changed)} changed, "
            f"{len(summary.removed)} removed, {summary.unchanged} unchanged.",
        )
        return htmx.go_to(request, "routes:route-list")
    upload = request.FILES.get("file")
    if upload is None:
        return render(request, template, {"mode": mode, "errors": ["Choose a routes file to upload."]}, status=422)
    limit = importexport.MAX_FILE_BYTES
    if upload.size is not None and upload.size > limit:
        errors = [f"The file is {upload.size:,} bytes; the limit is {limit:,} bytes. Nothing was changed."]
        return render(request, template, {"mode": mode, "errors": errors}, status=422)
    data = upload.read(limit + 1)
    parsed = importexport.parse_bytes(data)
    if not parsed.ok:
        return render(request, template, {"mode": mode, "errors": parsed.errors, "filename": upload.name}, status=422)
    token = _store_upload(data)
    preview = services.import_preview(parsed.routes(), mode)
    context = {
        "mode": mode,
        "preview": preview,
        "token": token,
        "version": services.current_version(),
        "filename": upload.name,
        "count": len(parsed.rows),
    }
    return render(request, template, context)


def _upload_dir() -> Any:
    path = settings.DATA_DIR / "route-imports"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _store_upload(data: bytes) -> str:
    cutoff = (timezone.now() - IMPORT_TTL).timestamp()
    for old in _upload_dir().glob("*.txt"):
        with contextlib.suppress(OSError):
            if old.stat().st_mtime < cutoff:
                old.unlink()
    token = secrets.token_urlsafe(18) + "-" + hashlib.sha256(data).hexdigest()[:12]
    path = _upload_dir() / f"{token}.txt"
    path.touch(mode=0o600)  # the uploaded table is the network's map: for this service's user only
    path.write_bytes(data)
    return token


def _stored_upload(token: str) -> bytes | None:
    if not token.replace("-", "").replace("_", "").isalnum() or len(token) > 80:
        return None
    path = _upload_dir() / f"{token}.txt"
    try:
        return bytes(path.read_bytes())
    except OSError:
        return None


def _drop_upload(token: str) -> None:
    with contextlib.suppress(OSError):
        (_upload_dir() / f"{token}.txt").unlink()


# ---------------------------------------------------------------------------------------------------------------
# Audit log


@require_GET
@can_view
def audit_list(request: AuthedHtmxRequest) -> HttpResponse:
    """ "Route changes": the audit log (`delivery:audit-list`) filtered to routes and the route table."""
    query = request.GET.copy()
    query.setdefault("object_type", "route")
    return redirect(f"{reverse('delivery:audit-list')}?{query.urlencode()}")


# ---------------------------------------------------------------------------------------------------------------
# Destination controls (the ESA's Mail Policies > Destination Controls)


@require_GET
@can_view_destinations
def destination_list(request: AuthedHtmxRequest) -> HttpResponse:
    """The Default entry first, then the others in the order people read their names."""
    controls = list(DestinationControl.objects.select_related("bounce_profile"))
    default = next((c for c in controls if c.is_default), None)
    others = sorted(
        (c for c in controls if not c.is_default),
        key=lambda c: (destination_controls.display_destination(c.destination).casefold(), c.destination),
    )
    return render(request, "routes/destination_list.html", {"default": default, "controls": others})


@require_http_methods(["GET", "POST"])
@can_add_destination
def destination_add(request: AuthedHtmxRequest) -> HttpResponse:
    form = forms.DestinationForm(request.POST if request.method == "POST" else None)
    return _save_destination(request, form)


@require_http_methods(["GET", "POST"])
@can_change_destination
def destination_edit(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    control = get_object_or_404(DestinationControl.objects.select_related("bounce_profile"), pk=pk)
    form = forms.DestinationForm(request.POST if request.method == "POST" else None, control=control)
    return _save_destination(request, form)


def _save_destination(request: AuthedHtmxRequest, form: forms.DestinationForm) -> HttpResponse:
    template = htmx.partial_or_page(request, "routes/destination_form.html", "destination-form")
    context = {"form": form, "control": form.control}
    if request.method != "POST":
        return render(request, "routes/destination_form.html", context)
    if form.is_valid() and form.data_out is not None:
        try:
            if form.control is None:
                saved = services.create_destination(data=form.data_out, actor=request.user)
                messages.success(
                    request, f"Destination {destination_controls.display_destination(saved.destination)} added."
                )
            else:
                saved = services.update_destination(
                    destination_id=form.control.pk, data=form.data_out, actor=request.user
                )
                messages.success(
                    request, f"Destination {destination_controls.display_destination(saved.destination)} saved."
                )
        except services.DestinationInvalid as exc:
            form.apply_problems(exc.problems)
        else:
            return htmx.go_to(request, "routes:destination-list")
    return render(request, template, context, status=422)


@require_http_methods(["GET", "POST"])
@can_delete_destination
def destination_delete(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    """A confirmation page, then the delete; the Default entry is refused with a message."""
    control = get_object_or_404(DestinationControl, pk=pk)
    if control.is_default:
        messages.error(request, destination_controls.DEFAULT_PROTECTED)
        return redirect("routes:destination-list")
    if request.method == "POST":
        try:
            deleted = services.delete_destination(destination_id=control.pk, actor=request.user)
        except DefaultDestinationProtected as exc:
            messages.error(request, str(exc))
        else:
            messages.success(request, f"Destination {destination_controls.display_destination(deleted)} deleted.")
        return redirect("routes:destination-list")
    return render(request, "routes/destination_delete.html", {"control": control})
