"""Forms for the access pages: each field validated by `routes.access_services`' normalisers."""

from __future__ import annotations

from django import forms

from routes import access_services
from routes.models import RecipientAccessRule


class RatForm(forms.Form):
    domain = forms.CharField(max_length=300, help_text="example.com, .example.com (subdomains) or ALL")
    action = forms.ChoiceField(choices=RecipientAccessRule.Action.choices, initial="accept")
    comment = forms.CharField(max_length=255, required=False)

    def clean_domain(self) -> str:
        try:
            return access_services.normalize_rat_domain(self.cleaned_data["domain"])
        except access_services.AccessInvalid as exc:
            raise forms.ValidationError(str(exc)) from None

    def clean(self) -> dict[str, object] | None:
        data = super().clean()
        if data and data.get("domain") == "ALL" and data.get("action") == "accept":
            self.add_error("action", "Accepting ALL domains makes this an open relay for every client. Refused.")
        return data


class RelayForm(forms.Form):
    network = forms.CharField(max_length=64, help_text="CIDR, IPv4 or IPv6, e.g. 10.0.0.0/8 or 2001:db8::/32")
    comment = forms.CharField(max_length=255, required=False)

    def clean_network(self) -> str:
        try:
            return access_services.normalize_network(self.cleaned_data["network"])
        except access_services.AccessInvalid as exc:
            raise forms.ValidationError(str(exc)) from None


class SmtpUserForm(forms.Form):
    username = forms.CharField(max_length=150)
    password = forms.CharField(
        widget=forms.PasswordInput, required=False, help_text="At least 10 characters; empty keeps the password"
    )
    is_active = forms.BooleanField(required=False, initial=True, label="Active")
