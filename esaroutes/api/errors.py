"""Every API error is `application/problem+json` (RFC 9457), naming the field that is wrong.

    {"type": "about:blank", "title": "Bad Request", "status": 400,
     "detail": "domain: Enter a domain such as example.com.",
     "errors": [{"field": "domain", "detail": "Enter a domain such as example.com."}]}

`errors` is there for validation failures only: one entry per message, `field` a dotted path into the request
body (`hosts.1.port`) or a query parameter's name, `null` for a problem of the request as a whole. Raise DRF's
`ValidationError({"field": ["message"]})` (or `invalid(field, message)`) from a view and this handler shapes it;
around a service call, `refused(kind, problems)` (`model_checks()` for a model's ValidationError) turns the
service's refusal into that.
Statuses of our own: 409 (`Conflict`: the Default entry kept, a profile still in use), 412 (If-Match names
another version), 413 (body over the endpoint's limit) and 428 (a write without If-Match); 401 carries
`WWW-Authenticate: Bearer`, 429 carries `Retry-After`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from http import HTTPStatus
from typing import Any, TypeVar

from django.core.exceptions import (
    DisallowedHost,
    PermissionDenied,
    RequestDataTooBig,
    SuspiciousOperation,
    TooManyFieldsSent,
    TooManyFilesSent,
)
from django.core.exceptions import ValidationError as DjangoValidationError
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.response import Response

CONTENT_TYPE = "application/problem+json"
E = TypeVar("E", bound=Exception)


class OwnStatus(exceptions.APIException):
    """A status DRF has no exception for: a subclass sets `status_code` and `default_detail`; its code is the
    status's name (`precondition_failed`)."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.default_code = HTTPStatus(cls.status_code).name.lower()


class PreconditionFailed(OwnStatus):
    status_code = status.HTTP_412_PRECONDITION_FAILED
    default_detail = "If-Match does not name the current version: read it again (its ETag) and retry"


class PreconditionRequired(OwnStatus):
    status_code = status.HTTP_428_PRECONDITION_REQUIRED
    default_detail = "send If-Match with the ETag of what you read (or If-Match: * to overwrite whatever is there)"


class Conflict(OwnStatus):
    """409: the object cannot be changed that way as things stand (the Default entry, a profile routes use)."""

    status_code = status.HTTP_409_CONFLICT
    default_detail = "this conflicts with the current state"


class PayloadTooLarge(OwnStatus):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_detail = "the request body is too large"


def invalid(field: str | None, message: str) -> exceptions.ValidationError:
    """A validation error at one field (None: the request as a whole), to raise."""
    return exceptions.ValidationError({field or "non_field_errors": [message]})


@contextlib.contextmanager
def refused(kind: type[E], problems: Callable[[E], Mapping[str, Sequence[str]]]) -> Iterator[None]:
    """Around a service call: its refusal (`kind`) as a 400 at the fields `problems(exc)` names, by field name
    (a dotted path; `__all__` or `non_field_errors` for the request as a whole)."""
    try:
        yield
    except kind as exc:
        raise exceptions.ValidationError({field: list(messages) for field, messages in problems(exc).items()}) from None


def model_checks() -> contextlib.AbstractContextManager[None]:
    """Around a service call: its ValidationError (the model's checks, `full_clean`, by field) as a 400 at the
    same fields."""
    return refused(DjangoValidationError, _by_field)


def _by_field(exc: DjangoValidationError) -> dict[str, list[str]]:
    return exc.message_dict if hasattr(exc, "error_dict") else {"non_field_errors": exc.messages}


def in_use(what: str, users: Iterable[object], *, shown: int = 10) -> Conflict:
    """The 409 of deleting what others still use (`ProtectedError.protected_objects`), naming the first of them."""
    names = sorted(str(user) for user in users)
    listed = ", ".join(names[:shown]) + (f" and {len(names) - shown} more" if len(names) > shown else "")
    routes = "route uses" if len(names) == 1 else "routes use"
    return Conflict(f"{len(names)} {routes} this {what} ({listed}): give them another one first")


def field_errors(detail: Any, path: str = "") -> Iterator[dict[str, Any]]:
    """DRF's nested error detail as flat {field, detail} entries, fields as dotted paths."""
    if isinstance(detail, dict):
        for key, value in detail.items():
            name = "" if key in ("non_field_errors", "__all__") else str(key)
            yield from field_errors(value, f"{path}.{name}" if path and name else (name or path))
    elif isinstance(detail, list):
        if all(not isinstance(item, dict | list) for item in detail):
            for item in detail:
                yield {"field": path or None, "detail": str(item)}
        else:
            for index, item in enumerate(detail):
                yield from field_errors(item, f"{path}.{index}" if path else str(index))
    else:
        yield {"field": path or None, "detail": str(detail)}


def problem(status_code: int, detail: str, **extra: Any) -> Response:
    """A problem+json response built by hand (a view answering an error without raising)."""
    body = {"type": "about:blank", "title": HTTPStatus(status_code).phrase, "status": status_code, "detail": detail}
    return Response({**body, **extra}, status=status_code, content_type=CONTENT_TYPE)


def suspicious_detail(exc: Exception) -> str:
    """What was wrong with a request Django refused as suspicious, in words for its client (never the setting
    to change: that is for the operator's log, where Django writes it)."""
    if isinstance(exc, DisallowedHost):
        return "the Host header does not name this server (ALLOWED_HOSTS)"
    if isinstance(exc, TooManyFieldsSent | TooManyFilesSent):
        return "the request has too many form fields or files"
    if isinstance(exc, SuspiciousOperation):
        return "the request was refused as malformed"
    return "bad request"


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    if isinstance(exc, SuspiciousOperation):
        return problem(status.HTTP_400_BAD_REQUEST, suspicious_detail(exc))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound(str(exc) or None)
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied(str(exc) or None)
    elif isinstance(exc, RequestDataTooBig):
        exc = PayloadTooLarge()
    if not isinstance(exc, exceptions.APIException):
        return None  # a bug: Django's 500 (and its log line), never a guess dressed as a problem
    headers: dict[str, str] = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = str(getattr(exc, "auth_header"))  # noqa: B009
    wait = getattr(exc, "wait", None)  # Throttled's (not in the 3.16 stubs)
    if isinstance(exc, exceptions.Throttled) and wait is not None:
        headers["Retry-After"] = str(int(wait) + 1)
    extra: dict[str, Any] = {}
    if isinstance(exc, exceptions.ValidationError):
        errors = list(field_errors(exc.detail))
        first = errors[0] if errors else {"field": None, "detail": "invalid request"}
        detail = f"{first['field']}: {first['detail']}" if first["field"] else str(first["detail"])
        extra["errors"] = errors
    else:
        detail = str(exc.detail)
    response = problem(exc.status_code, detail, **extra)
    for name, value in headers.items():
        response[name] = value
    return response


def from_form(form: Any) -> exceptions.ValidationError:
    """A Django form's errors (a page's filter form reused by the API) as a validation error at each field."""
    return exceptions.ValidationError(
        {("non_field_errors" if name == "__all__" else name): list(messages) for name, messages in form.errors.items()}
    )
