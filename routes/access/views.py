"""Access rules in the browser: the Recipient Access Table, relay networks and SMTP AUTH users, on one page.

Each table is a partial (`access-rat`, `access-relay`, `access-users`: the partial's root id is its hx-target);
a form posts to its view, which reads it with `routes.access.forms`, writes through `routes.access.services`
(validated by the models' rules, audited) and returns the table's partial, or the partial with the errors at
their fields and status 422.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.decorators import permission_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET, require_POST

from esaroutes import htmx
from esaroutes.types import AuthedHtmxRequest
from routes.access import forms, services
from routes.models import RecipientAccessRule, RelayNetwork, SmtpUser

TEMPLATE = "routes/access_list.html"
can_view = permission_required("routes.view_recipientaccessrule", raise_exception=True)
can_change_rat = permission_required("routes.change_recipientaccessrule", raise_exception=True)
can_change_relay = permission_required("routes.change_relaynetwork", raise_exception=True)
can_change_users = permission_required("routes.change_smtpuser", raise_exception=True)


def _context(**bound: Any) -> dict[str, Any]:
    return {
        "rules": RecipientAccessRule.objects.order_by("domain"),
        "has_all_rule": RecipientAccessRule.objects.filter(domain="ALL").exists(),
        "relays": RelayNetwork.objects.order_by("network"),
        "users": SmtpUser.objects.order_by("username"),
        "rat_form": bound.get("rat_form") or forms.RatForm(),
        "relay_form": bound.get("relay_form") or forms.RelayForm(),
        "user_form": bound.get("user_form") or forms.SmtpUserForm(),
    }


@require_GET
@can_view
def access_list(request: AuthedHtmxRequest) -> HttpResponse:
    return render(request, TEMPLATE, _context())


@require_POST
@can_change_rat
def rat_save(request: AuthedHtmxRequest) -> HttpResponse:
    form = forms.RatForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            services.rat_save(request.user, data["domain"], data["action"], data["comment"])
        except services.AccessInvalid as exc:
            exc.show_on(form)
        else:
            return htmx.render(request, TEMPLATE, "access-rat", _context())
    return htmx.render(request, TEMPLATE, "access-rat", _context(rat_form=form), status=422)


@require_POST
@can_change_rat
def rat_delete(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    if RecipientAccessRule.objects.filter(pk=pk).exists():
        services.rat_delete(request.user, pk)
    return htmx.render(request, TEMPLATE, "access-rat", _context())


@require_POST
@can_change_relay
def relay_add(request: AuthedHtmxRequest) -> HttpResponse:
    form = forms.RelayForm(request.POST)
    if form.is_valid():
        try:
            services.relay_save(request.user, form.cleaned_data["network"], form.cleaned_data["comment"])
        except services.AccessInvalid as exc:
            exc.show_on(form)
        else:
            return htmx.render(request, TEMPLATE, "access-relay", _context())
    return htmx.render(request, TEMPLATE, "access-relay", _context(relay_form=form), status=422)


@require_POST
@can_change_relay
def relay_delete(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    if RelayNetwork.objects.filter(pk=pk).exists():
        services.relay_delete(request.user, pk)
    return htmx.render(request, TEMPLATE, "access-relay", _context())


@require_POST
@can_change_users
def user_save(request: AuthedHtmxRequest) -> HttpResponse:
    form = forms.SmtpUserForm(request.POST)
    if form.is_valid():
        data = form.cleaned_data
        try:
            services.user_save(request.user, data["username"], data["password"] or None, data["is_active"])
        except services.AccessInvalid as exc:
            exc.show_on(form)
        else:
            return htmx.render(request, TEMPLATE, "access-users", _context())
    return htmx.render(request, TEMPLATE, "access-users", _context(user_form=form), status=422)


@require_POST
@can_change_users
def user_delete(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    if SmtpUser.objects.filter(pk=pk).exists():
        services.user_delete(request.user, pk)
    return htmx.render(request, TEMPLATE, "access-users", _context())
