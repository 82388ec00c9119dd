"""The Webhooks page: register, edit and delete webhooks, and see their last attempts (Administrators)."""

from __future__ import annotations

from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from delivery.webhooks import services
from delivery.webhooks.models import Webhook, WebhookAttempt
from esaroutes import permissions

LAST_ATTEMPTS = 50


class WebhookForm(forms.Form):
    name = forms.CharField(max_length=100)
    url = forms.CharField(label="URL", max_length=2000, help_text="http:// or https://; each event is POSTed here")
    events = forms.MultipleChoiceField(choices=Webhook.Event.choices, widget=forms.CheckboxSelectMultiple)
    secret = forms.CharField(
        max_length=200,
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Key of the HMAC-SHA256 signature. Empty: a new webhook gets a random one (shown once), "
        "an existing one keeps its own.",
    )
    enabled = forms.BooleanField(required=False, initial=True)


def _context(request: HttpRequest, **extra: Any) -> dict[str, Any]:
    attempts = WebhookAttempt.objects.select_related("webhook", "event")[:LAST_ATTEMPTS]
    return {"hooks": Webhook.objects.all(), "attempts": attempts, "form": WebhookForm(), **extra}


def _save(form: WebhookForm, hook: Webhook | None, request: HttpRequest) -> Webhook | None:
    if not form.is_valid():
        return None
    data = form.cleaned_data
    try:
        if hook is None:
            return services.create(actor=request.user, **data)
        return services.update(hook, actor=request.user, **data)
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            for message in messages:
                form.add_error(field if field in form.fields else None, message)
        return None


@permissions.require("webhooks.view")
def webhook_list(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return render(request, "delivery/webhook_list.html", _context(request))
    permissions.check(request.user, "webhooks.change")
    form = WebhookForm(request.POST)
    hook = _save(form, None, request)
    if hook is None:
        return render(request, "delivery/webhook_list.html", _context(request, form=form), status=422)
    shown = "" if form.cleaned_data["secret"] else hook.secret
    return render(request, "delivery/webhook_list.html", _context(request, created=hook, new_secret=shown))


@permissions.require("webhooks.change")
def webhook_edit(request: HttpRequest, pk: int) -> HttpResponse:
    hook = get_object_or_404(Webhook, pk=pk)
    if request.method != "POST":
        initial = {"name": hook.name, "url": hook.url, "events": hook.events, "enabled": hook.enabled}
        return render(request, "delivery/webhook_form.html", {"hook": hook, "form": WebhookForm(initial=initial)})
    form = WebhookForm(request.POST)
    if _save(form, hook, request) is None:
        return render(request, "delivery/webhook_form.html", {"hook": hook, "form": form}, status=422)
    return HttpResponseRedirect(reverse("delivery:webhook-list"))


@require_POST
@permissions.require("webhooks.change")
def webhook_delete(request: HttpRequest, pk: int) -> HttpResponse:
    services.delete(get_object_or_404(Webhook, pk=pk), actor=request.user)
    return HttpResponseRedirect(reverse("delivery:webhook-list"))
