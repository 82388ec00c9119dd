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

View = Callable[..., HttpResponse]
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


def _table_views(
    partial: str,
    form_name: str,
    form_class: type[django_forms.Form],
    can_change: Callable[[View], View],
    write: Callable[[Any, dict[str, Any]], object],
    delete: Callable[[Any, int], None],
    model: type[services.AccessRow],
) -> tuple[View, View]:
    """A table's save and delete views: each answers the table's partial (`partial`, its root id)."""

    @require_POST
    @can_change
    def save(request: AuthedHtmxRequest) -> HttpResponse:
        return _write(request, form_class(request.POST), partial, form_name, lambda data: write(request.user, data))

    @require_POST
    @can_change
    def remove(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
        if model._default_manager.filter(pk=pk).exists():  # gone already: nothing to do
            delete(request.user, pk)
        return htmx.render(request, TEMPLATE, partial, _context())

    return save, remove


rat_save, rat_delete = _table_views(
    "access-rat",
    "rat_form",
    forms.RatForm,
    can_change_rat,
    lambda user, data: services.rat_save(user, data["domain"], data["action"], data["comment"]),
    services.rat_delete,
    RecipientAccessRule,
)
relay_add, relay_delete = _table_views(
    "access-relay",
    "relay_form",
    forms.RelayForm,
    can_change_relay,
    lambda user, data: services.relay_save(user, data["network"], data["comment"]),
    services.relay_delete,
    RelayNetwork,
)
user_save, user_delete = _table_views(
    "access-users",
    "user_form",
    forms.SmtpUserForm,
    can_change_users,
    lambda user, data: services.user_save(user, data["username"], data["password"] or None, data["is_active"]),
    services.user_delete,
    SmtpUser,
)


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
