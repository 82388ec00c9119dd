"""The API token page (`/tokens/`): every user makes and revokes their own tokens; administrators see everyone's.

A new token's secret is shown once, on the page that answers its creation, and never again (only its digest is
kept). Writes go through `esaroutes.apitokens` (validated, audited).
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.utils import timezone
from django.views.decorators.http import require_GET, require_POST

from esaroutes import apitokens, permissions
from esaroutes.models import ApiToken
from esaroutes.types import AuthedHtmxRequest

TEMPLATE = "tokens/token_list.html"


class TokenForm(forms.Form):
    name = forms.CharField(
        max_length=64,
        help_text="Letters, digits, '.', '_' or '-': it names the token in the audit log.",
        widget=forms.TextInput(attrs={"autocomplete": "off", "spellcheck": "false"}),
    )
    read_only = forms.BooleanField(required=False, label="Read-only (GET requests only)")
    expires = forms.IntegerField(
        required=False,
        min_value=1,
        max_value=apitokens.MAX_DAYS,
        label="Expires after (days)",
        help_text="Empty: never.",
    )


def _context(request: AuthedHtmxRequest, form: TokenForm, secret: str = "") -> dict[str, Any]:
    everyone = permissions.can(request.user, "users.change")
    tokens = ApiToken.objects.select_related("user").order_by("user__username", "name")
    return {
        "form": form,
        "secret": secret,
        "everyone": everyone,
        "tokens": tokens if everyone else tokens.filter(user=request.user),
        "now": timezone.now(),
    }


@require_GET
def token_list(request: AuthedHtmxRequest) -> HttpResponse:
    return render(request, TEMPLATE, _context(request, TokenForm()))


@require_POST
def token_create(request: AuthedHtmxRequest) -> HttpResponse:
    form = TokenForm(request.POST)
    if form.is_valid():
        try:
            made = apitokens.create(
                user=request.user,
                name=form.cleaned_data["name"],
                read_only=form.cleaned_data["read_only"],
                expires_days=form.cleaned_data["expires"],
                actor=request.user,
            )
        except apitokens.TokenInvalid as exc:
            form.add_error(exc.field, str(exc))
        else:
            return render(request, TEMPLATE, _context(request, TokenForm(), secret=made.secret), status=201)
    return render(request, TEMPLATE, _context(request, form), status=422)


@require_POST
def token_revoke(request: AuthedHtmxRequest, pk: int) -> HttpResponse:
    token = get_object_or_404(ApiToken.objects.select_related("user"), pk=pk)
    if token.user_id != request.user.pk and not permissions.can(request.user, "users.change"):
        raise PermissionDenied("only its owner or an administrator may revoke a token")
    apitokens.revoke(name=token.name, actor=request.user)
    messages.success(request, f"Token {token.name} revoked: requests with it are refused from now on.")
    return redirect("token-list")
