"""Rate limit per token: `ESAROUTES_API_RATE` requests (default 1200/minute) per token, per user for the session.

Counted in the default cache (Redis in production, shared by every web worker; the file cache on the embedded
default). Over the limit: 429 with `Retry-After`. Unauthenticated requests are refused (401) before this runs.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from rest_framework.request import Request
from rest_framework.throttling import SimpleRateThrottle

from esaroutes.api import auth


class TokenRateThrottle(SimpleRateThrottle):
    scope = "api"
    cache_format = "esaroutes:api-throttle:%(scope)s:%(ident)s"

    def get_rate(self) -> str:
        return str(settings.ESAROUTES_API_RATE)  # read per request: tests and settings overrides take effect

    def get_cache_key(self, request: Request, view: Any) -> str:
        token = auth.token_of(request)
        if token is not None:
            ident = f"token:{token.digest[:16]}"  # not the id: ids come back after a database reset
        elif request.user.is_authenticated:
            ident = f"user:{request.user.pk}"
        else:
            ident = f"address:{self.get_ident(request)}"
        return self.cache_format % {"scope": self.scope, "ident": ident}
