"""The OpenAPI schema's shared parts: the problem+json error responses every operation may answer."""

from __future__ import annotations

from typing import Any

from django import forms
from drf_spectacular.utils import OpenApiParameter

PROBLEM = {
    "type": "object",
    "description": "RFC 9457 problem details (esaroutes/api/errors.py)",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "detail"],
                "properties": {"field": {"type": "string", "nullable": True}, "detail": {"type": "string"}},
            },
        },
    },
}
REASONS = {
    "400": "The request is invalid: `errors` names each wrong field",
    "401": "No token, or an unknown, expired or revoked one",
    "403": "The role (or a read-only token) may not do this",
    "404": "No such object",
    "405": "Method not allowed",
    "406": "Only JSON is answered",
    "412": "If-Match names another version: read it again",
    "413": "The body is too large",
    "415": "Send JSON (Content-Type: application/json)",
    "428": "A write without If-Match",
    "429": "Over the token's rate limit: see Retry-After",
}
WRITE_ONLY = {"412", "413", "415", "428"}


def add_problem_responses(result: dict[str, Any], generator: Any, request: Any, public: bool) -> dict[str, Any]:
    """drf-spectacular postprocessing hook: the Problem component, the error statuses on every operation, and the
    problem+json body of the error statuses a view declares itself."""
    result.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM
    ref = {"content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}}
    for path_item in result.get("paths", {}).values():
        for method, operation in path_item.items():
            if not isinstance(operation, dict) or "responses" not in operation:
                continue
            for code, reason in REASONS.items():
                if code in WRITE_ONLY and method in ("get", "head"):
                    continue
                operation["responses"].setdefault(code, {"description": reason, **ref})
            for code, response in operation["responses"].items():
                if code.startswith("4") and "content" not in response:  # a view's own error status (409 ...)
                    response.update(ref)
    return result


def form_parameters(form_class: type[forms.Form], *, exclude: tuple[str, ...] = ()) -> list[OpenApiParameter]:
    """The query parameters of a page's filter form, for `@extend_schema(parameters=...)`: one per field, typed
    and bounded as the form validates it (the API and the page then take the same filters)."""
    out = []
    for name, field in form_class.base_fields.items():
        if name in exclude:
            continue
        schema: dict[str, Any] = {"type": "string"}
        if isinstance(field, forms.IntegerField):
            schema = {"type": "integer"}
            if field.min_value is not None:
                schema["minimum"] = field.min_value
            if field.max_value is not None:
                schema["maximum"] = field.max_value
        elif isinstance(field, forms.DateTimeField):
            schema = {"type": "string", "format": "date-time"}
        elif isinstance(field, forms.ChoiceField):
            choices: Any = field.choices
            schema = {"type": "string", "enum": [str(value) for value, _ in choices]}
        elif isinstance(field, forms.CharField) and field.max_length is not None:
            schema["maxLength"] = field.max_length
        if isinstance(field, forms.MultipleChoiceField):
            schema = {"type": "array", "items": schema}  # repeated: ?outcome=a&outcome=b
        description = str(field.label or name) + (f": {field.help_text}" if field.help_text else "")
        out.append(OpenApiParameter(name, schema, OpenApiParameter.QUERY, description=description))
    return out
