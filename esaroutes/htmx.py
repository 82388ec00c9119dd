"""The one partial-or-page choice every view makes: an htmx request gets the page's partial
(`template.html#partial-name`, whose name is also its root element's id and hx-target), anything else, and an
htmx history restore (the browser wants the whole page back), gets the whole page."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from django.http import HttpResponse, HttpResponseRedirect, QueryDict
from django.shortcuts import redirect
from django.shortcuts import render as django_render
from django.urls import reverse
from django.views.decorators.vary import vary_on_headers
from django_htmx.http import HttpResponseClientRedirect

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


def go_to(request: HtmxRequest, url_name: str) -> HttpResponse:
    """After a save, the page `url_name`: htmx is told to load it whole (HX-Redirect), a plain form post redirected."""
    url = reverse(url_name)
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


def without_empty_params(view: Callable[..., HttpResponse]) -> Callable[..., HttpResponse]:
    """A filter page's URL keeps only the filters in use: `?q=&domain=&page=2` is `?page=2`.

    A form submitted by GET sends every field, typed or not. A plain request with empty parameters is
    redirected to the URL without them; an htmx request is served as if they were absent (so the pager's links
    are clean too) and `HX-Push-Url` puts the clean URL in the address bar.
    """

    @functools.wraps(view)
    def wrapped(request: HtmxRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if request.method != "GET" or all(v for values in request.GET.lists() for v in values[1]):
            return view(request, *args, **kwargs)
        clean = QueryDict(mutable=True)
        for key, values in request.GET.lists():
            kept = [v for v in values if v]
            if kept:
                clean.setlist(key, kept)
        url = f"{request.path}?{clean.urlencode()}" if clean else request.path
        if not request.htmx:
            return HttpResponseRedirect(url)
        clean._mutable = False
        request.GET = clean  # type: ignore[assignment]  # an immutable QueryDict, as Django's own
        response = view(request, *args, **kwargs)
        if urlsplit(request.htmx.current_url or "").path == request.path:  # this page's own filter form
            response["HX-Push-Url"] = url
        return response

    return wrapped
