"""Access rules in the browser: the Recipient Access Table, relay networks and SMTP AUTH users, on one page.

Each table is a partial (`access-rat`, `access-relay`, `access-users`: the partial's root id is its hx-target);
a form posts to its view, which reads it with `routes.access.forms`, writes through `routes.access.services`
(validated by the models' rules, audited) and returns the table's partial, or the partial with the errors at
their fields and status 422.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django import forms as django_forms
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
    return _write(
        request,
        forms.RatForm(request.POST),
        "access-rat",
        "rat_form",
        lambda data: services.rat_save(request.user, data["domain"], data["action"], data["comment"]),
    )


@require_POST
@can_change_rat
def rat_delete(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    return _delete(request, RecipientAccessRule, pk, "access-rat", services.rat_delete)


@require_POST
@can_change_relay
def relay_add(request: AuthedHtmxRequest) -> HttpResponse:
    return _write(
        request,
        forms.RelayForm(request.POST),
        "access-relay",
        "relay_form",
        lambda data: services.relay_save(request.user, data["network"], data["comment"]),
    )


@require_POST
@can_change_relay
def relay_delete(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    return _delete(request, RelayNetwork, pk, "access-relay", services.relay_delete)


@require_POST
@can_change_users
def user_save(request: AuthedHtmxRequest) -> HttpResponse:
    return _write(
        request,
        forms.SmtpUserForm(request.POST),
        "access-users",
        "user_form",
        lambda data: services.user_save(request.user, data["username"], data["password"] or None, data["is_active"]),
    )


@require_POST
@can_change_users
def user_delete(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    return _delete(request, SmtpUser, pk, "access-users", services.user_delete)


def _write(
    request: AuthedHtmxRequest,
    form: django_forms.Form,
    partial: str,
    form_name: str,
    write: Callable[[dict[str, Any]], object],
) -> HttpResponse:
    """Validate the form and `write` its data through the services: the table's partial, or the partial with the
    errors at their fields (the form's, then the models' rules) and status 422."""
    if form.is_valid():
        try:
            write(form.cleaned_data)
        except services.AccessInvalid as exc:
            exc.show_on(form)
        else:
            return htmx.render(request, TEMPLATE, partial, _context())
    return htmx.render(request, TEMPLATE, partial, _context(**{form_name: form}), status=422)


def _delete(
    request: AuthedHtmxRequest,
    model: type[services.AccessRow],
    pk: int,
    partial: str,
    delete: Callable[[Any, int], None],
) -> HttpResponse:
    """Delete the row (gone already: nothing to do) and answer the table's partial."""
    if model._default_manager.filter(pk=pk).exists():
        delete(request.user, pk)
    return htmx.render(request, TEMPLATE, partial, _context())
