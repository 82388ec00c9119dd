"""Keyset pagination by id: `?after=ID&limit=N` (ascending) or, for newest-first lists, `?before=ID&limit=N`.

Never OFFSET: a page is `WHERE id > after ORDER BY id LIMIT n+1`, as fast on the millionth row as on the first
and stable while rows are added. The answer is `{"results": [...], "next": URL or null}`; follow `next` until it
is null. A view lists newest first by setting `keyset_descending = True` (then `before` replaces `after`).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from rest_framework.pagination import BasePagination
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.utils.urls import remove_query_param, replace_query_param

from esaroutes import numbers
from esaroutes.api import errors
from esaroutes.numbers import MAX_ID


def _int_param(request: Request, name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    value = numbers.whole(raw, minimum=minimum, maximum=MAX_ID if maximum is None else maximum)
    if value is None:
        limit = f" and at most {maximum}" if maximum is not None else ""
        raise errors.invalid(name, f"{raw[:40]!r} is not a whole number of at least {minimum}{limit}")
    return value


class KeysetPagination(BasePagination):
    def paginate_queryset(self, queryset: QuerySet[Any], request: Request, view: Any = None) -> list[Any]:
        self.request = request
        self.descending = bool(getattr(view, "keyset_descending", False))
        self.param = "before" if self.descending else "after"
        maximum = settings.ESAROUTES_API_MAX_PAGE_SIZE
        limit = _int_param(request, "limit", min(settings.ESAROUTES_API_PAGE_SIZE, maximum), 1, maximum)
        mark = _int_param(request, self.param, 0, 0, MAX_ID)
        if mark:
            queryset = queryset.filter(pk__lt=mark) if self.descending else queryset.filter(pk__gt=mark)
        rows = list(queryset.order_by("-pk" if self.descending else "pk")[: limit + 1])
        self.next_mark = rows[limit - 1].pk if len(rows) > limit else None
        return rows[:limit]

    def next_link(self) -> str | None:
        if self.next_mark is None:
            return None
        url = self.request.build_absolute_uri()
        return replace_query_param(remove_query_param(url, self.param), self.param, self.next_mark)

    def get_paginated_response(self, data: Any) -> Response:
        return Response({"results": data, "next": self.next_link()})

    def get_paginated_response_schema(self, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": ["results", "next"],
            "properties": {
                "results": schema,
                "next": {"type": "string", "format": "uri", "nullable": True, "description": "the next page"},
            },
        }

    def get_schema_operation_parameters(self, view: Any) -> list[dict[str, Any]]:
        descending = bool(getattr(view, "keyset_descending", False))
        mark = "before" if descending else "after"
        return [
            {
                "name": mark,
                "in": "query",
                "required": False,
                "description": f"only rows whose id is {'below' if descending else 'above'} this one (from `next`)",
                "schema": {"type": "integer", "minimum": 0},
            },
            {
                "name": "limit",
                "in": "query",
                "required": False,
                "description": "rows per page",
                "schema": {"type": "integer", "minimum": 1, "maximum": settings.ESAROUTES_API_MAX_PAGE_SIZE},
            },
        ]
