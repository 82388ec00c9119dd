from __future__ import annotations

from django.contrib.auth.decorators import login_not_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.views.decorators.http import require_GET


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
