"""The one partial-or-page choice every view makes: an htmx request gets the page's partial
(`template.html#partial-name`, whose name is also its root element's id and hx-target), anything else, and an
htmx history restore (the browser wants the whole page back), gets the whole page."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.http import HttpResponse
from django.shortcuts import render as django_render
from django.views.decorators.vary import vary_on_headers

from esaroutes.types import HtmxRequest

# A page and its htmx partial share a URL: the browser's cache must keep them apart (or "back" shows a fragment).
vary_on_htmx = vary_on_headers("HX-Request", "HX-History-Restore-Request")


def partial_or_page(request: HtmxRequest, page: str, partial: str) -> str:
    """The template name to render: `page#partial` for an htmx request (not a history restore), else `page`."""
    if request.htmx and not request.htmx.history_restore_request:
        return f"{page}#{partial}"
    return page


def render(
    request: HtmxRequest, page: str, partial: str, context: Mapping[str, Any] | None = None, *, status: int = 200
) -> HttpResponse:
    """Render the partial or the page (see `partial_or_page`)."""
    return django_render(request, partial_or_page(request, page, partial), context, status=status)
