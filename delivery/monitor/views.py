"""Operator pages: dashboard, mail log, message tracking, queue, hosts, domain status, audit log.

Thin views: a form validates the URL's filters (400 on nonsense), `delivery.monitor.selectors` reads,
`delivery.spool.actions` changes state, and each view declares the capability it needs (`esaroutes.permissions`;
403 otherwise).
Regions htmx refreshes are partials named like their root element's id.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import messages
from django.core.cache import cache
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.http import url_has_allowed_host_and_scheme
from django.views.decorators.http import require_GET, require_POST

from delivery import engine, maillog, resolve
from delivery.models import HostStatus, Message, Recipient
from delivery.monitor import forms, selectors
from delivery.spool import actions
from esaroutes import htmx, permissions, tasks
from esaroutes.types import AuthedHtmxRequest
from routes import domains
from routes.models import AuditEntry

PER_PAGE = 50


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _refused(request: AuthedHtmxRequest, page: str, partial: str, context: dict[str, Any]) -> HttpResponse:
    """A filter that is not a filter (a letter in a MID, a date that is not one): the page again with nothing
    searched and each reason at its field (`context["form"]`, see templates/_filter_errors.html). A page is a 400;
    an htmx request gets the partial with the reasons as a 422, the status the site's htmx config swaps in."""
    status = 422 if request.htmx and not request.htmx.history_restore_request else 400
    return htmx.render(request, page, partial, context, status=status)


# --- Dashboard -------------------------------------------------------------------------------------------------


def heartbeat(now: datetime) -> dict[str, Any] | None:
    """When a worker last ran the heartbeat task (esaroutes.tasks.heartbeat), or None if never."""
    value = cache.get(tasks.HEARTBEAT_KEY)
    if not isinstance(value, dict) or not isinstance(value.get("at"), str):
        return None
    at = parse_datetime(value["at"])
    if at is None:
        return None
    age = max(0, int((now - at).total_seconds()))
    return {"at": at, "age": age, "host": str(value.get("host", "")), "stale": age > 60}


@require_GET
@htmx.vary_on_htmx
def dashboard(request: AuthedHtmxRequest) -> HttpResponse:
    """The home page (Monitor > Delivery Status and `status detail`); help desk users land on tracking."""
    if not permissions.can(request.user, "dashboard.view"):
        if permissions.can(request.user, "tracking.view"):
            return HttpResponseRedirect(reverse("delivery:tracking"))
        permissions.check(request.user, "dashboard.view")
    now = timezone.now()
    sort = request.GET.get("sort", "active")
    if sort not in selectors.DESTINATION_SORTS:
        sort = "active"
    domain_states = selectors.recipient_domain_states()
    ctx = {
        "now": now,
        "counters": selectors.counters(now, selectors.state_totals(domain_states)),
        "windows": selectors.WINDOWS,
        "chart": selectors.per_minute_chart(now),
        "history_start": selectors.history_start(),
        "destinations": selectors.destinations(now, sort=sort, domain_states=domain_states),
        "sorts": selectors.DESTINATION_SORTS,
        "sort": sort,
        "lines": selectors.newest_lines(),
        "heartbeat": heartbeat(now),
    }
    ctx["first_steps"] = selectors.first_steps()  # the "what to do first" block, above the refreshed panel
    return htmx.render(request, "delivery/dashboard.html", "dashboard-panel", ctx)


# --- Mail log --------------------------------------------------------------------------------------------------


@require_GET
@htmx.vary_on_htmx
@permissions.require("maillog.view")
@htmx.without_empty_params
def maillog_page(request: AuthedHtmxRequest) -> HttpResponse:
    """The mail log, newest at the bottom, following live with a keyset cursor (`?after=<last id>`).

    The page shows the newest lines matching the filters (or the ones before `?before=<id>`); a sentinel element
    at the end polls for the lines after the last one shown and replaces itself with them and a new sentinel.
    """
    form = forms.LogFilterForm(request.GET)
    if not form.is_valid():
        return _refused(request, "delivery/maillog.html", "log-view", {"form": form, "files": _log_files()})
    now = timezone.now()
    limit = settings.ESAROUTES_LOG_PAGE_ROWS
    filters, bounded = form.filters(now, settings.ESAROUTES_LOG_SEARCH_HOURS)
    after = form.cleaned_data.get("after")
    before = form.cleaned_data.get("before")
    follow = before is None and filters.until is None
    base_query = form.query_without("after", "before")
    if after is not None and request.htmx:
        lines = selectors.log_after(filters, after, limit)
        if not lines:
            return HttpResponse(status=204)  # nothing new: htmx keeps the sentinel (and its cursor) as it is
        ctx = {"lines": lines, "cursor": lines[-1].pk, "base_query": base_query, "tail": True}
        return render(request, "delivery/maillog.html#log-tail", ctx)
    if before is not None:
        lines = selectors.log_before(filters, before, limit)
    elif after is not None:
        lines = selectors.log_after(filters, after, limit)
    else:
        lines = selectors.log_newest(filters, limit)
    # The cursor of the tail: the last line shown, else the newest line of the whole log (nothing older can come).
    cursor = lines[-1].pk if lines else selectors.max_log_id()
    ctx = {
        "form": form,
        "lines": lines,
        "cursor": cursor,
        "first_id": lines[0].pk if lines else None,
        "has_older": len(lines) >= limit,
        "base_query": base_query,
        "follow": follow,
        "bounded": bounded,
        "search_hours": settings.ESAROUTES_LOG_SEARCH_HOURS,
        "levels": maillog,
        "files": _log_files(),
    }
    return htmx.render(request, "delivery/maillog.html", "log-view", ctx)


def _log_files() -> list[dict[str, Any]]:
    log = maillog.writer.log_file()
    paths = [*reversed(log.saved_files())]
    if log.path.exists():
        paths.insert(0, log.path)
    return [{"name": p.name, "size": p.stat().st_size} for p in paths if p.exists()]


@require_GET
@permissions.require("maillog.view")
def maillog_download(request: AuthedHtmxRequest, name: str) -> FileResponse:
    """mail.current or a rolled-over file, by name (only names that the log directory lists)."""
    log = maillog.writer.log_file()
    allowed: dict[str, Path] = {p.name: p for p in log.saved_files()}
    allowed[log.path.name] = log.path
    path = allowed.get(name)
    if path is None or not path.exists():
        raise Http404("no such log file")
    return FileResponse(path.open("rb"), as_attachment=True, filename=name, content_type="text/plain")


# --- Message tracking ------------------------------------------------------------------------------------------


@require_GET
@htmx.vary_on_htmx
@permissions.require("tracking.view")
@htmx.without_empty_params
def tracking(request: AuthedHtmxRequest) -> HttpResponse:
    form = forms.TrackingForm(request.GET)
    if not form.is_valid():
        return _refused(request, "delivery/tracking.html", "tracking-results", {"form": form})
    now = timezone.now()
    qs = selectors.tracking_queryset(**form.search_kwargs(now))
    # With no filter the page opens on the most recent messages (of the last week), newest first, as a mail
    # gateway's tracking centre does, rather than on an empty form.
    searched = True
    recent = not any(k in request.GET for k in form.fields)
    page = Paginator(qs, PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    ctx = {
        "form": form,
        "page": page,
        "rows": selectors.tracking_rows(list(page.object_list)) if page else [],
        "query": query.urlencode(),
        "searched": searched,
        "recent": recent,
    }
    return htmx.render(request, "delivery/tracking.html", "tracking-results", ctx)


@require_GET
@permissions.require("tracking.view")
def message_detail(request: AuthedHtmxRequest, mid: int) -> HttpResponse:
    message = get_object_or_404(Message.objects.select_related("bounce_of"), pk=mid)
    story = selectors.message_story(message)
    active = sum(r.state in Recipient.ACTIVE for r in story.recipients)
    ctx = {"story": story, "message": message, "active": active, "here": request.get_full_path()}
    return render(request, "delivery/message_detail.html", ctx)


@require_GET
@permissions.require("tracking.view", "message.raw")
def message_raw(request: AuthedHtmxRequest, mid: int) -> HttpResponse:
    """The stored message as received (administrators only), as a download, never rendered by the browser."""
    mid, data = selectors.raw_message(mid)
    response = HttpResponse(data, content_type="application/octet-stream")
    response["Content-Disposition"] = f'attachment; filename="mid-{mid}.eml"'
    return response


# --- Hosts -----------------------------------------------------------------------------------------------------


@require_GET
@htmx.vary_on_htmx
@permissions.require("hosts.view")
@htmx.without_empty_params
def host_list(request: AuthedHtmxRequest) -> HttpResponse:
    q = request.GET.get("q", "").strip()[:255]
    qs = selectors.host_list(q=q, down_at=timezone.now() if request.GET.get("down") == "1" else None)
    page = Paginator(qs, PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    shown = selectors.with_live_connections(page.object_list)
    ctx = {"page": page, "hosts": shown, "q": q, "now": timezone.now(), "query": query.urlencode()}
    return htmx.render(request, "delivery/host_list.html", "host-table", ctx)


@require_POST
@permissions.require("hosts.view", "hosts.change")
def host_retry(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    """ "Retry now": mark the host up and send its routes' backlog now (`delivery.actions.mark_host_up`)."""
    host = get_object_or_404(HostStatus, pk=pk)
    kicked = actions.mark_host_up(host.host, host.port, actor=request.user)
    note = f"{host.host}:{host.port} marked up; {_plural(kicked, 'queued message')} sent now."
    if request.htmx:
        host.refresh_from_db()
        ctx = {"h": selectors.with_live_connections([host])[0], "now": timezone.now(), "note": note}
        return render(request, "delivery/_host_row.html", ctx)
    messages.success(request, note)
    return HttpResponseRedirect(reverse("delivery:host-list"))


@require_GET
@permissions.require("hosts.view")
def domain_detail(request: AuthedHtmxRequest, domain: str) -> HttpResponse:
    """`hoststatus <domain>`: counters, gauges, hosts, the latest 5xx error and the route for the domain: its
    hosts in the order the next connection tries them, as delivery resolves them (`delivery.resolve`; the MX
    exchanges of a route's host names included), with their state. USEDNS or unrouted domains are not looked up
    in DNS here: the hosts tried for them are listed above."""
    try:
        domain = domains.to_ascii_name(domain.strip())  # Unicode or IDNA, as the queue stores it
    except ValueError:
        domain = domain.strip().lower()  # an address literal ([192.0.2.1]) or no domain: "No record of host"
    now = timezone.now()
    status = selectors.domain_status(domain, now)
    route = resolve.preview(domain, domain_mx=False, now=now)
    return render(
        request,
        "delivery/domain_detail.html",
        {
            "status": status,
            "domain": domain,
            "route": route,
            "where": route.resolution,
            "destination": route.destination(),  # its limits and the slots in use now, as hoststatus shows them
            "now": now,
            "suspension": selectors.suspension_of(domain),
        },
        status=200 if status else 404,
    )


# --- Audit log -------------------------------------------------------------------------------------------------


@require_GET
@htmx.vary_on_htmx
@permissions.require("audit.view")
@htmx.without_empty_params
def audit_list(request: AuthedHtmxRequest) -> HttpResponse:
    """Who changed what, when: every audited change (routes, access rules, queue actions), newest first.

    `?q=` matches the object or the user; a Unicode domain (`bücher.example`) also matches its stored IDNA form.
    """
    form = forms.AuditFilterForm(request.GET)
    if not form.is_valid():
        ctx = {"form": form, "actions": AuditEntry.Action.choices, "object_types": _audit_object_types()}
        return _refused(request, "audit/audit_list.html", "audit-table", ctx)
    qs = selectors.audit_entries(**form.search_kwargs())
    page = Paginator(qs.order_by("-at", "-id"), PER_PAGE).get_page(request.GET.get("page"))
    query = request.GET.copy()
    query.pop("page", None)
    ctx = {
        "form": form,
        "page": page,
        "entries": page.object_list,
        "query": query.urlencode(),
        "actions": AuditEntry.Action.choices,
        "object_types": _audit_object_types(),
    }
    return htmx.render(request, "audit/audit_list.html", "audit-table", ctx)


def _audit_object_types() -> list[str]:
    return list(AuditEntry.objects.values_list("object_type", flat=True).distinct().order_by()[:50])


# --- Queue -----------------------------------------------------------------------------------------------------


@require_GET
@htmx.vary_on_htmx
@permissions.require("queue.view")
@htmx.without_empty_params
def queue_page(request: AuthedHtmxRequest) -> HttpResponse:
    """`showrecipients`: queued and delayed recipients by destination, oldest first, next attempt, last reply."""
    ctx = _queue_context(request.GET, request.get_full_path())
    return htmx.render(request, "delivery/queue.html", "queue-table", ctx)


def _queue_context(params: QueryDict, here: str) -> dict[str, Any]:
    """The queue page for these URL parameters; `here` is where its actions come back to."""
    domain = params.get("domain", "").strip().lower()[:255]
    page = Paginator(selectors.queue_recipients(domain), PER_PAGE).get_page(params.get("page"))
    query = params.copy()
    query.pop("page", None)
    suspended = selectors.suspended_domains()
    return {
        "domains": selectors.queue_domains(),
        "suspensions": selectors.suspensions(),
        "suspended": suspended,
        "suspended_all": engine.SUSPEND_ALL in suspended,
        "domain": domain,
        "page": page,
        "recipients": page.object_list,
        "query": query.urlencode(),
        "now": timezone.now(),
        "here": here,
    }


# --- Queue actions -----------------------------------------------------------------------------------------------

QUEUE_ACTIONS: dict[str, dict[str, str]] = {
    "deliver": {
        "url": "delivery:queue-deliver-now",
        "verb": "Deliver now",
        "explain": "The messages are sent now instead of at their next retry time (the ESA's delivernow).",
    },
    "bounce": {
        "url": "delivery:queue-bounce",
        "verb": "Bounce",
        "explain": "Each recipient is hard-bounced now and a delivery status notification goes to its sender "
        "(the ESA's bouncerecipients).",
    },
    "delete": {
        "url": "delivery:queue-delete",
        "verb": "Delete",
        "explain": "The recipients leave the queue without a bounce: their senders are not told "
        "(the ESA's deleterecipients).",
    },
    "redirect": {
        "url": "delivery:queue-redirect",
        "verb": "Redirect",
        "explain": "Their next connection, now, goes to this host instead of their route's hosts (the ESA's "
        "redirectrecipients); a 4xx keeps them queued for it, a 5xx bounces them. Mail arriving later follows "
        "its route.",
    },
}


def _next_url(request: AuthedHtmxRequest, value: str) -> str:
    """Where to go back to after an action: a page of this site, else the queue."""
    if value and url_has_allowed_host_and_scheme(value, {request.get_host()}, require_https=request.is_secure()):
        return value
    return reverse("delivery:queue")


def _deliver_now(form: forms.QueueActionForm, actor: Any) -> int:
    d = form.cleaned_data
    scope = d["scope"]
    if scope == "message":
        return actions.deliver_now(actor=actor, mid=d["mid"])
    if scope == "domain":
        return actions.deliver_now(actor=actor, domain=d["domain"])
    if scope == "all":
        return actions.deliver_now(actor=actor)
    mids = sorted(set(actions.select_recipients(recipient_ids=d["recipient"]).values_list("message_id", flat=True)))
    return sum(actions.deliver_now(actor=actor, mid=mid) for mid in mids)


@require_POST
@permissions.require("queue.view", "queue.change")
def queue_action(request: AuthedHtmxRequest, action: str) -> HttpResponse:
    """Deliver now, bounce, delete or redirect (to `relay`): the first POST shows what would be done and asks; the
    confirmed POST (`confirm=1`) calls `delivery.spool.actions`, which logs it the ESA's way and audits it, then
    goes back with the result as a message."""
    spec = QUEUE_ACTIONS[action]
    form = forms.QueueActionForm(request.POST)
    relay: tuple[str, int] | None = None
    if form.is_valid() and action == "redirect":
        text = (form.cleaned_data.get("relay") or "").strip()
        try:
            relay = resolve.parse_relay(text)
        except ValueError as exc:
            form.add_error("relay", f"Redirect to {text or '(no host given)'}: {exc}.")
    if not form.is_valid():
        # Nothing ticked, no domain, ...: the queue page the request came from, the reasons on top, status 400.
        back = _next_url(request, request.POST.get("next", "")[:2000])
        ctx = {**_queue_context(QueryDict(urlsplit(back).query), back), "action_form": form, "spec": spec}
        return render(request, "delivery/queue.html", ctx, status=400)
    back = _next_url(request, form.cleaned_data.get("next") or "")
    chosen = actions.select_recipients(**form.selection())
    if form.cleaned_data["confirm"]:
        if relay is not None:
            n = actions.redirect_recipients(chosen, relay, actor=request.user)
            where = f"{relay[0]}:{relay[1]}"
            messages.success(
                request, f"{_plural(n, 'recipient')} redirected to {where}." if n else "Nothing redirected."
            )
        elif action == "deliver":
            kicked = _deliver_now(form, request.user)
            messages.success(request, f"Rescheduled {_plural(kicked, 'message')} for immediate delivery.")
        elif action == "bounce":
            n = actions.bounce_recipients(chosen, actor=request.user)
            messages.success(request, f"{_plural(n, 'recipient')} bounced." if n else "No messages bounced.")
        else:
            n = actions.delete_recipients(chosen, actor=request.user)
            messages.success(request, f"{_plural(n, 'recipient')} deleted." if n else "No recipients deleted.")
        return HttpResponseRedirect(back)
    recipients, message_count = selectors.selection_size(chosen)
    sample = list(chosen.select_related("message").order_by("message__received_at", "message_id", "rid")[:50])
    what = f"{_plural(recipients, 'recipient')} of {_plural(message_count, 'message')}"
    title = f"Deliver {_plural(message_count, 'message')} now?" if action == "deliver" else f"{spec['verb']} {what}?"
    if relay is not None:
        title = f"Redirect {what} to {relay[0]}:{relay[1]}?"
    ctx = {
        "form": form,
        "action": action,
        "spec": spec,
        "title": title,
        "what": what,
        "recipients": recipients,
        "sample": sample,
        "more": max(0, recipients - len(sample)),
        "back": back,
        "scope": form.cleaned_data["scope"],
        "relay": f"{relay[0]}:{relay[1]}" if relay is not None else "",
    }
    return render(request, "delivery/queue_confirm.html", ctx)


@require_POST
@permissions.require("queue.view", "queue.change")
def queue_suspension(request: AuthedHtmxRequest, action: str) -> HttpResponse:
    """Suspend or resume the deliveries to one domain (or ALL), as `suspenddel`/`resumedel` do; no confirmation
    step, since either undoes the other and neither sends, bounces or deletes anything by itself."""
    form = forms.SuspensionForm(request.POST)
    if not form.is_valid():  # as queue_action: the queue page, the reason on top, status 400
        back = _next_url(request, request.POST.get("next", "")[:2000])
        ctx = {**_queue_context(QueryDict(urlsplit(back).query), back), "action_form": form}
        return render(request, "delivery/queue.html", ctx, status=400)
    back = _next_url(request, form.cleaned_data.get("next") or "")
    domain = form.cleaned_data["domain"]
    name = "every domain (ALL)" if domain == engine.SUSPEND_ALL else domain
    if action == "suspend":
        if actions.suspend_delivery([domain], actor=request.user):
            messages.success(request, f"Delivery to {name} suspended: its mail is queued until you resume it.")
        else:
            messages.warning(request, f"Delivery to {name} was already suspended.")
    elif actions.resume_delivery([domain], actor=request.user):
        messages.success(request, f"Delivery to {name} resumed: its queued mail is sent now.")
    elif engine.SUSPEND_ALL in selectors.suspended_domains():
        messages.warning(request, f"{name} was not resumed: delivery to every domain (ALL) is suspended.")
    else:
        messages.warning(request, f"Delivery to {name} was not suspended.")
    return HttpResponseRedirect(back)
