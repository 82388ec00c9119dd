"""Who is calling: a personal API token (`Authorization: Bearer TOKEN`) or the browser's session (with CSRF).

A token is `esr_` and 43 URL-safe characters (32 random bytes); the database keeps its SHA-256 digest only, so a
leaked table reveals no usable token. An unknown, expired or malformed token, or one whose user is inactive, is
refused with 401 and `WWW-Authenticate: Bearer` (never silently treated as anonymous). The token is the request's
`request.auth`; `request.user` is its user, whose role decides what the token may do (esaroutes/api/permissions.py).
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions
from rest_framework.request import Request

from esaroutes.models import ApiToken

PREFIX = "esr_"
LAST_USED_EVERY = timedelta(minutes=1)  # `last_used_at` is written at most this often per token


def new_secret() -> str:
    return PREFIX + secrets.token_urlsafe(32)


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def token_of(request: Request | Any) -> ApiToken | None:
    """The token the request was authenticated with, or None (the session)."""
    auth = getattr(request, "auth", None)
    return auth if isinstance(auth, ApiToken) else None


class BearerTokenAuthentication(authentication.BaseAuthentication):
    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, ApiToken] | None:
        words = authentication.get_authorization_header(request).split()
        if not words or words[0].lower() != b"bearer":
            return None  # no token: the session may still authenticate
        if len(words) != 2:
            raise exceptions.AuthenticationFailed("Authorization: Bearer takes exactly one token")
        try:
            secret = words[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("the token is not ASCII") from None
        token = ApiToken.objects.select_related("user").filter(digest=digest(secret)).first()
        if token is None:
            raise exceptions.AuthenticationFailed("unknown or revoked token")
        now = timezone.now()
        if token.expired(now):
            raise exceptions.AuthenticationFailed(
                f"the token {token.name!r} expired at {token.expires_at:%Y-%m-%d %H:%M} UTC"
            )
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("the token's user is inactive")
        if token.last_used_at is None or now - token.last_used_at >= LAST_USED_EVERY:
            ApiToken.objects.filter(pk=token.pk).update(last_used_at=now)
            token.last_used_at = now
        return token.user, token

    def authenticate_header(self, request: Request) -> str:
        return 'Bearer realm="esaroutes"'


class SessionAuthentication(authentication.SessionAuthentication):
    """The logged-in browser's session; unsafe methods need the CSRF token (header `X-CSRFToken`), as on the pages."""


class BearerScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]  # drf-spectacular: the schema
    target_class = BearerTokenAuthentication
    name = "bearerAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "http", "scheme": "bearer", "description": "a personal API token (/tokens/)"}


class SessionScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    target_class = SessionAuthentication
    name = "cookieAuth"

    def get_security_definition(self, auto_schema: Any) -> dict[str, str]:
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
