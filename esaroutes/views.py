from __future__ import annotations

from http import HTTPStatus

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect, JsonResponse
from django.templatetags.static import static
from django.views import defaults
from django.views.decorators.csrf import requires_csrf_token
from django.views.decorators.http import require_GET

from esaroutes.api import errors


@require_GET
@login_not_required
def healthz(request: HttpRequest) -> HttpResponse:
    """Liveness for load balancers: answers 200 when the database answers, 503 otherwise. Shows nothing else."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
    except Exception:
        return HttpResponse("database unavailable\n", status=503, content_type="text/plain")
    return HttpResponse("ok\n", content_type="text/plain")


@require_GET
@login_not_required
def favicon(request: HttpRequest) -> HttpResponse:
    """`/favicon.ico`: the icon the pages link to, for a client that asks the conventional address."""
    return HttpResponsePermanentRedirect(static("img/favicon.svg"))


# --- error pages: the site's HTML pages, or problem+json under /api/ ----------------------------------------------
# Django calls these for an error raised outside a DRF view's own handling: a Host header that ALLOWED_HOSTS
# refuses (checked by middleware, before any view), a SuspiciousOperation, a bug. A script talking to /api/ gets
# RFC 9457 problem+json as from every API view; a browser gets the page in the site's layout.


def _problem(status: int, detail: str) -> HttpResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail}
    return JsonResponse(body, status=status, content_type=errors.CONTENT_TYPE)


def _is_api(request: HttpRequest) -> bool:
    return request.path_info.startswith("/api/")


@requires_csrf_token
def bad_request(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _problem(400, errors.suspicious_detail(exception))
    return defaults.bad_request(request, exception)


@requires_csrf_token
def permission_denied(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _problem(403, str(exception) or "you may not do this")
    return defaults.permission_denied(request, exception)


@requires_csrf_token
def page_not_found(request: HttpRequest, exception: Exception) -> HttpResponse:
    if _is_api(request):
        return _problem(404, "no such endpoint or object")
    return defaults.page_not_found(request, exception)


@requires_csrf_token
def server_error(request: HttpRequest) -> HttpResponse:
    if _is_api(request):
        return _problem(500, "internal error: the server's log has the details")
    return defaults.server_error(request)
