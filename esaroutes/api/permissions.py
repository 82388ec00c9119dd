"""What a caller may do: the capability each view declares for reading and for writing, held by the user's role.

The same capabilities as the pages (`esaroutes.permissions`): a token or a session of a Read-only operator may
`routes.view` and not `routes.change`, exactly as in the browser. A read-only token may only read (GET, HEAD,
OPTIONS), whatever its user's role. A view that declares no capability is refused to everyone (fail closed);
`ANY_ROLE` lets in any authenticated user (the schema and its documentation pages).
"""

from __future__ import annotations

from typing import Any

from rest_framework import exceptions
from rest_framework.permissions import SAFE_METHODS, BasePermission
from rest_framework.request import Request

from esaroutes import permissions
from esaroutes.api import auth

ANY_ROLE = "*"


def needed(view: Any, method: str) -> str:
    """The capability the view needs for the method ("" when it declares none)."""
    if method in SAFE_METHODS:
        return str(getattr(view, "read_capability", ""))
    return str(getattr(view, "write_capability", ""))


class HasCapability(BasePermission):
    def has_permission(self, request: Request, view: Any) -> bool:
        if not (request.user.is_authenticated):
            raise exceptions.NotAuthenticated()
        token = auth.token_of(request)
        if token is not None and token.read_only and request.method not in SAFE_METHODS:
            raise exceptions.PermissionDenied(f"the token {token.name!r} is read-only")
        capability = needed(view, request.method or "GET")
        if capability == ANY_ROLE:
            return True
        if not capability or not permissions.can(request.user, capability):
            raise exceptions.PermissionDenied(
                f"your role may not {'read' if request.method in SAFE_METHODS else 'change'} this"
                + (f" (needs {capability})" if capability else "")
            )
        return True


class AnyRole(HasCapability):
    """Any authenticated user (read-only tokens included, for reads): the schema, Swagger UI and Redoc."""

    def has_permission(self, request: Request, view: Any) -> bool:
        if not (request.user.is_authenticated):
            raise exceptions.NotAuthenticated()
        return True
