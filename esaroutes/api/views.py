"""The base of every API view, and the schema and documentation views (`/api/v1/schema/`, `docs/`, `redoc/`).

`ApiView` is DRF's `GenericAPIView` (for `paginate_queryset` / `get_paginated_response`: keyset by id) with the
project's rules on top (authentication, capabilities, throttling and problem+json errors come from
`REST_FRAMEWORK` in settings and apply to it as to any DRF view):
- `read_capability` / `write_capability`: what GET and what the other methods need (esaroutes.permissions);
  undeclared means refused to everyone;
- the request body is bounded: `max_body_bytes` (default `ESAROUTES_API_MAX_BODY`) against Content-Length, 413 over;
- a successful GET answers `ETag` (esaroutes/api/conditional.py), unless the view set one itself.

`CollectionView` is a model's rows at `<noun>/` (GET lists, POST creates) and `ObjectView` one of them at `<pk>/`
(GET, PUT, PATCH, DELETE) with the If-Match write step written once; `created` is the 201 answer of a POST to a
collection.
"""

from __future__ import annotations

from typing import Any, cast

from django import forms
from django.conf import settings
from django.contrib.auth.models import AnonymousUser, User
from django.db import models, transaction
from django.db.models import QuerySet
from django.shortcuts import get_object_or_404
from django.urls import URLPattern, path
from drf_spectacular import views as spectacular
from drf_spectacular.renderers import OpenApiJsonRenderer, OpenApiYamlRenderer
from drf_spectacular.utils import extend_schema, extend_schema_view
from rest_framework import exceptions, serializers, status
from rest_framework.generics import GenericAPIView
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response

from esaroutes import numbers
from esaroutes.api import auth, conditional, errors, permissions, schema
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
        length = numbers.whole(request.META.get("CONTENT_LENGTH") or "0")
        if length is None:
            raise exceptions.ParseError("Content-Length is not a number")
        if length > limit:
            raise errors.PayloadTooLarge(f"the body has {length} bytes; this endpoint takes at most {limit}")

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


# The rows of one model at `<noun>/` (`CollectionView`: GET lists them, POST creates one) and at `<noun>/<pk>/`
# (`ObjectView`: GET reads one, PUT and PATCH change it, DELETE removes it), each write through the app's service.
#
# A subclass sets `serializer_class` (what an object reads as: the answers and the ETag's source) and, when a
# body differs from it, `input_class`; it sets `model` or defines `rows` (every object, with what its
# representation reads).
# The schema of GET, POST, PUT and PATCH follows from those two classes (a method the subclass writes itself
# keeps its own); DELETE answers 204. (Comments, not docstrings: the schema would show a docstring as every
# subclass's description.)
class RowsView(ApiView):
    input_class: type[serializers.BaseSerializer[Any]] | None = None
    model: type[models.Model] | None = None

    def rows(self) -> QuerySet[Any]:
        """Every object, with what its representation reads (`select_related`...): every row of `model` unless
        a subclass says more."""
        if self.model is None:
            raise NotImplementedError(f"{type(self).__name__}: set model or define rows()")
        return self.model._default_manager.all()

    def read(self, pk: int, *, lock: bool = False) -> Any:
        """The object (its own row locked with `lock`), or Http404."""
        rows = self.rows()
        return get_object_or_404(rows.select_for_update(of=("self",)) if lock else rows, pk=pk)

    def represent(self, obj: Any) -> Any:
        return self.get_serializer_class()(obj).data

    def validated(self, request: Request, *, partial: bool = False) -> dict[str, Any]:
        """The request body, validated by `input_class` (or `serializer_class`): a 400 at each wrong field."""
        body = (self.input_class or self.get_serializer_class())(data=request.data, partial=partial)
        body.is_valid(raise_exception=True)
        return dict(body.validated_data)


def _schema_from_classes(cls: type[RowsView], **methods: Any) -> None:
    """Annotate the methods `cls` inherits (not those it writes itself) with their request and response."""
    if cls.serializer_class is not None:
        inherited = {name: schema for name, schema in methods.items() if name not in cls.__dict__}
        extend_schema_view(**inherited)(cls)


# GET: the objects `listed` (`rows` unless a subclass filters them), keyset pages by id. POST: the body
# validated, then `create` (the app's service) makes the object; the answer is the 201 of `created`.
class CollectionView(RowsView):
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        answer = cls.serializer_class
        if answer is not None:
            body = cls.input_class or answer
            post = extend_schema(request=body, responses={201: answer})
            _schema_from_classes(cls, get=extend_schema(responses=answer(many=True)), post=post)

    def listed(self) -> QuerySet[Any]:
        """What GET lists (`self.request` holds the query's filters)."""
        return self.rows()

    def create(self, request: Request, data: dict[str, Any]) -> Any:
        """Make the object from `data` (the validated body) through the app's service; return it."""
        raise NotImplementedError

    def get(self, request: Request) -> Response:
        rows = self.paginate_queryset(self.listed())
        return self.get_paginated_response(self.get_serializer_class()(rows, many=True).data)

    def post(self, request: Request) -> Response:
        made = self.create(request, self.validated(request))
        return created(request, self.represent(self.read(made.pk)), made.pk)


# Each write validates the body first (a bad body is a 400 whatever its If-Match), then, in one transaction,
# locks the row, checks If-Match against the object's representation (`conditional.require_match`: 428
# without, 412 when stale) and calls the subclass's `change` or `remove`, which call the app's service. A
# change answers the object as it now is, with its ETag (the If-Match of the next write).
class ObjectView(RowsView):
    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        answer = cls.serializer_class
        if answer is not None:
            write = extend_schema(request=cls.input_class or answer, responses=answer)
            _schema_from_classes(cls, put=write, patch=write)

    def change(self, request: Request, obj: Any, data: dict[str, Any], *, partial: bool) -> None:
        """Write `data` (the validated body; with `partial`, only the fields the request gave) to `obj`."""
        raise NotImplementedError

    def remove(self, request: Request, obj: Any) -> None:
        raise NotImplementedError

    def get(self, request: Request, pk: int) -> Response:
        return Response(self.represent(self.read(pk)))

    def put(self, request: Request, pk: int) -> Response:
        return self._write(request, pk, partial=False)

    def patch(self, request: Request, pk: int) -> Response:
        return self._write(request, pk, partial=True)

    @extend_schema(responses={204: None})
    def delete(self, request: Request, pk: int) -> Response:
        with transaction.atomic():
            self.remove(request, self._locked(request, pk))
        return Response(status=status.HTTP_204_NO_CONTENT)

    def _locked(self, request: Request, pk: int) -> Any:
        obj = self.read(pk, lock=True)
        conditional.require_match(request, self.represent(obj))
        return obj

    def _write(self, request: Request, pk: int, *, partial: bool) -> Response:
        data = self.validated(request, partial=partial)
        if partial:
            data = {k: v for k, v in data.items() if k in request.data}
        with transaction.atomic():
            self.change(request, self._locked(request, pk), data, partial=partial)
        answer = self.represent(self.read(pk))
        response = Response(answer)
        response["ETag"] = conditional.etag(answer)
        return response


# A page's filter form as the query (`filter_form`: the page's fields, validation and query; a bad filter is a
# 400 at its field) and the rows `search(form)` selects, in keyset pages, each page turned by `shown` into what
# `serializer_class` reads. The schema's query parameters are the form's fields.
class SearchView(ApiView):
    filter_form: type[forms.Form]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        answer = cls.serializer_class
        if answer is not None and "get" not in cls.__dict__:
            parameters = schema.form_parameters(cls.filter_form)
            extend_schema_view(get=extend_schema(parameters=parameters, responses=answer(many=True)))(cls)

    def search(self, form: Any) -> QuerySet[Any]:
        """The rows the valid `form` selects (the page's selector)."""
        raise NotImplementedError

    def shown(self, page: list[Any]) -> Any:
        return page

    def get(self, request: Request) -> Response:
        form = self.filter_form(request.query_params)
        if not form.is_valid():
            raise errors.from_form(form)
        page = self.paginate_queryset(self.search(form)) or []
        return self.get_paginated_response(self.get_serializer_class()(self.shown(page), many=True).data)


def with_ids(data: dict[str, Any], *related: str) -> dict[str, Any]:
    """`data` (a validated body) by the services' names: each `related` object given (a PrimaryKeyRelatedField's
    model instance, or None) as its `<name>_id`."""
    named = dict(data)
    for name in related:
        if name in named:
            named[f"{name}_id"] = getattr(named.pop(name), "pk", None)
    return named


def created(request: Request, representation: Any, pk: int) -> Response:
    """The 201 of a POST to a collection: the new object as GET reads it, its ETag, and `Location: <pk>/`."""
    response = Response(representation, status=status.HTTP_201_CREATED)
    response["ETag"] = conditional.etag(representation)
    response["Location"] = request.build_absolute_uri(f"{pk}/")
    return response


def rows_paths(prefix: str, name: str, collection: type[CollectionView], one: type[ObjectView]) -> list[URLPattern]:
    """The URLs of a model's rows: `<prefix>/` (`<name>-list`) and `<prefix>/<pk>/` (`<name>-detail`)."""
    return [
        path(f"{prefix}/", collection.as_view(), name=f"{name}-list"),
        path(f"{prefix}/<int:pk>/", one.as_view(), name=f"{name}-detail"),
    ]


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
