"""Request types for views, as django-htmx and django-stubs recommend."""

from __future__ import annotations

from django.contrib.auth.models import User
from django.http import HttpRequest
from django_htmx.middleware import HtmxDetails


class HtmxRequest(HttpRequest):
    htmx: HtmxDetails


class AuthedHtmxRequest(HtmxRequest):
    user: User
