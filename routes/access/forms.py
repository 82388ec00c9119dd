"""Forms for the access pages. They only present the fields: every rule is the model's or the service's, checked
by `routes.access.services` when the view saves, whose `AccessInvalid.show_on` puts each message at its field."""

from __future__ import annotations

from django import forms

from routes.models import RecipientAccessRule


class RatForm(forms.Form):
    domain = forms.CharField(max_length=300, help_text="example.com, .example.com (subdomains) or ALL")
    action = forms.ChoiceField(choices=RecipientAccessRule.Action.choices, initial="accept")
    comment = forms.CharField(max_length=255, required=False)


class RelayForm(forms.Form):
    network = forms.CharField(max_length=64, help_text="CIDR, IPv4 or IPv6, e.g. 10.0.0.0/8 or 2001:db8::/32")
    comment = forms.CharField(max_length=255, required=False)


class SmtpUserForm(forms.Form):
    username = forms.CharField(max_length=150)
    password = forms.CharField(
        widget=forms.PasswordInput, required=False, help_text="At least 10 characters; empty keeps the password"
    )
    is_active = forms.BooleanField(required=False, initial=True, label="Active")
