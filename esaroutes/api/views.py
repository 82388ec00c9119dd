"""The base of every API view, and the schema and documentation views (`/api/v1/schema/`, `docs/`, `redoc/`).

`ApiView` is DRF's `GenericAPIView` (for `paginate_queryset` / `get_paginated_response`: keyset by id) with the
project's rules on top (authentication, capabilities, throttling and problem+json errors come from
`REST_FRAMEWORK` in settings and apply to it as to any DRF view):
- `read_capability` / `write_capability`: what GET and what the other methods need (esaroutes.permissions);
  undeclared means refused to everyone;
- the request body is bounded: `max_body_bytes` (default `ESAROUTES_API_MAX_BODY`) against Content-Length, 413 over;
- a successful GET answers `ETag` (esaroutes/api/conditional.py), unless the view set one itself.
"""

from __future__ import annotations

from typing import Any, cast

from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from drf_spectacular import views as spectacular
from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiYamlRenderer
from drf_spectacular.utils import extend_schema
from rest_framework import exceptions
from rest_framework.generics import GenericAPIView
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from esaroutes.api import auth, conditional, errors, permissions
from esaroutes.models import ApiToken

# Swagger UI and Redoc inject their own styles; everything else stays as strict as the pages' policy.
DOCS_CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "connect-src 'self'; worker-src 'self' blob:; frame-ancestors 'none'; base-uri 'self'; object-src 'none'"
)


class ProblemsInJson:
    """Errors render as problem+json whatever renderer the view negotiated (YAML schema, HTML docs, text export)."""

    def handle_exception(self, exc: Exception) -> Response:
        response: Response = super().handle_exception(exc)  # type: ignore[misc]
        if response.content_type == errors.CONTENT_TYPE:
            request: Request = self.request  # type: ignore[attr-defined]
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = errors.CONTENT_TYPE
        return response


class ApiView(ProblemsInJson, GenericAPIView[Any]):
    read_capability = ""
    write_capability = ""
    max_body_bytes: int | None = None
    metadata_class = None  # OPTIONS answers 405: the schema describes the API

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)  # authentication, capabilities, throttle: in that order
        limit = self.max_body_bytes or settings.ESAROUTES_API_MAX_BODY
        raw = request.META.get("CONTENT_LENGTH") or "0"
        if not raw.isdigit():
            raise exceptions.ParseError("Content-Length is not a number")
        if int(raw) > limit:
            raise errors.PayloadTooLarge(f"the body has {int(raw)} bytes; this endpoint takes at most {limit}")

    def finalize_response(self, request: Request, response: Any, *args: Any, **kwargs: Any) -> Any:
        response = super().finalize_response(request, response, *args, **kwargs)
        if (
            request.method == "GET"
            and isinstance(response, Response)
            and response.status_code == 200
            and response.data is not None
            and not response.has_header("ETag")
        ):
            response["ETag"] = conditional.etag(response.data)
        return response


@extend_schema(exclude=True)
class NoSuchEndpoint(ApiView):
    """Every other path under /api/v1/: a problem+json 404 (to an authenticated caller), not the pages' HTML one."""

    read_capability = permissions.ANY_ROLE
    write_capability = permissions.ANY_ROLE

    def initial(self, request: Request, *args: Any, **kwargs: Any) -> None:
        super().initial(request, *args, **kwargs)
        raise exceptions.NotFound("no such API endpoint: see /api/v1/schema/")


class SchemaView(ProblemsInJson, spectacular.SpectacularAPIView):
    read_capability = permissions.ANY_ROLE
    renderer_classes = [OpenApiJsonRenderer, OpenApiYamlRenderer]  # JSON unless asked ?format=yaml


class DocsPage(ProblemsInJson):
    """Swagger UI and Redoc: the schema's pages, from the sidecar's files, under their own CSP."""

    read_capability = permissions.ANY_ROLE
    url_name = "api:schema"

    @extend_schema(exclude=True)
    def get(self, request: Request, *args: Any, **kwargs: Any) -> Any:
        response = super().get(request, *args, **kwargs)  # type: ignore[misc]
        response["Content-Security-Policy"] = DOCS_CSP
        return response


class SwaggerView(DocsPage, spectacular.SpectacularSwaggerSplitView):
    pass


class RedocView(DocsPage, spectacular.SpectacularRedocView):
    pass


def actor(request: Request) -> ApiToken | User | AnonymousUser:
    """The audit actor of an API request: its token (named `api:<user>/<token>` in the log) or the session's user."""
    return auth.token_of(request) or cast(User, request.user)
