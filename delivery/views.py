from __future__ import annotations

from django.db.models import Count
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from delivery.models import MailLogLine, Recipient
from esaroutes.types import AuthedHtmxRequest


@require_GET
def dashboard(request: AuthedHtmxRequest) -> HttpResponse:
    counts = dict(Recipient.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    lines = list(MailLogLine.objects.order_by("-id")[:20])[::-1]
    template = "delivery/dashboard.html#dashboard-panel" if request.htmx else "delivery/dashboard.html"
    state_counts = [(value, label, counts.get(value, 0)) for value, label in Recipient.State.choices]
    return render(request, template, {"state_counts": state_counts, "lines": lines})
