"""`GET /api/v1/audit/`: the audit log (who changed what, when), newest first, keyset by id (`?before=ID`), with
the audit page's filters (`delivery.monitor.forms.AuditFilterForm`, the same validation and the same query,
`selectors.audit_entries`)."""

from __future__ import annotations

from django.db.models import QuerySet
from rest_framework import serializers

from delivery.monitor import forms, selectors
from esaroutes.api import views
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


class AuditLog(views.SearchView):
    """The audit page's rows, newest first; `object_type=route` gives the route changes (a route's and the whole
    table's). Secrets are never in it: a changed password or webhook secret is `(changed)`."""

    read_capability = "audit.view"
    keyset_descending = True
    serializer_class = AuditEntrySerializer
    filter_form = forms.AuditFilterForm

    def search(self, form: forms.AuditFilterForm) -> QuerySet[AuditEntry]:
        return selectors.audit_entries(**form.search_kwargs())
