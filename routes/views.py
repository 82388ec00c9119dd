from __future__ import annotations

from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from esaroutes.types import AuthedHtmxRequest
from routes.models import Route


@require_GET
def route_list(request: AuthedHtmxRequest) -> HttpResponse:
    routes = Route.objects.prefetch_related("hosts").order_by("domain")[:100]
    return render(request, "routes/route_list.html", {"routes": routes})
