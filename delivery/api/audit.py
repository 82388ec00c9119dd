"""`GET /api/v1/audit/`: the audit log (who changed what, when), newest first, keyset by id (`?before=ID`), with
the audit page's filters (`delivery.monitor.forms.AuditFilterForm`, the same validation and the same query,
`selectors.audit_entries`)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from delivery.monitor import forms, selectors
from esaroutes.api import errors, schema, views
from routes.models import AuditEntry


class AuditEntrySerializer(serializers.ModelSerializer[AuditEntry]):
    actor = serializers.CharField(
        source="actor_name",
        help_text="the user; `api:USER/TOKEN` for a change made with an API token; `cli...` for a command",
    )
    before = serializers.JSONField(allow_null=True, help_text="the object's fields before (null: it was created)")
    after = serializers.JSONField(allow_null=True, help_text="the object's fields after (null: it was deleted)")

    class Meta:
        model = AuditEntry
        fields = ["id", "at", "actor", "action", "object_type", "object_repr", "before", "after"]


class AuditLog(views.ApiView):
    """The audit page's rows, newest first; `object_type=route` gives the route changes (a route's and the whole
    table's). Secrets are never in it: a changed password or webhook secret is `(changed)`."""

    read_capability = "audit.view"
    keyset_descending = True

    @extend_schema(parameters=schema.form_parameters(forms.AuditFilterForm), responses=AuditEntrySerializer(many=True))
    def get(self, request: Request) -> Response:
        form = forms.AuditFilterForm(request.query_params)
        if not form.is_valid():
            raise errors.from_form(form)
        page: list[Any] = self.paginate_queryset(selectors.audit_entries(**form.search_kwargs())) or []
        return self.get_paginated_response(AuditEntrySerializer(page, many=True).data)
