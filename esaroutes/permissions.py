"""Who may do what: capabilities over Django permissions, for views and templates of every app.

A view declares what it needs; the server answers 403 when the user lacks it, and templates hide what the user
cannot do. Capabilities are names like "queue.change"; each maps to the Django permissions it requires (all of
them), which the role groups of `esaroutes.roles` grant. Superusers hold every capability.

In a view::

    from esaroutes import permissions

    @require_POST
    @permissions.require("queue.change")
    def queue_deliver_now(request: AuthedHtmxRequest) -> HttpResponse: ...

    if permissions.can(request.user, "routes.change"): ...
    permissions.check(request.user, "routes.change")     # raises PermissionDenied (403)

In a template (the context processor `esaroutes.permissions.capabilities` is installed)::

    {% if can.queue_change %}<button ...>Deliver now</button>{% endif %}

(dots become underscores: `can.routes_change`, `can.tracking_view`, ...). Capabilities:

| capability       | roles                                          | Django permissions                  |
|------------------|------------------------------------------------|-------------------------------------|
| dashboard.view   | Administrator, Operator, Read-only             | delivery.view_hoststatus            |
| hosts.view       | Administrator, Operator, Read-only             | delivery.view_hoststatus            |
| hosts.change     | Administrator, Operator                        | delivery.change_hoststatus          |
| queue.view       | Administrator, Operator, Read-only             | delivery.view_hoststatus, view_recipient |
| queue.change     | Administrator, Operator                        | delivery.change_recipient           |
| maillog.view     | all four                                       | delivery.view_maillogline           |
| tracking.view    | all four                                       | delivery.view_message               |
| message.raw      | Administrator                                  | delivery.view_messagebody           |
| routes.view      | Administrator, Operator, Read-only             | routes.view_route                   |
| routes.change    | Administrator, Operator                        | routes.change_route                 |
| destinations.view | Administrator, Operator, Read-only            | routes.view_destinationcontrol      |
| destinations.change | Administrator, Operator                      | routes.change_destinationcontrol    |
| access.view      | Administrator, Operator, Read-only             | routes.view_recipientaccessrule     |
| access.change    | Administrator, Operator                        | routes.change_recipientaccessrule   |
| bounceprofiles.view | Administrator, Operator, Read-only          | delivery.view_bounceprofile         |
| bounceprofiles.change | Administrator, Operator                   | delivery.change_bounceprofile       |
| authprofiles.view | Administrator, Operator, Read-only            | routes.view_authprofile             |
| authprofiles.change | Administrator, Operator                     | routes.change_authprofile           |
| audit.view       | Administrator, Operator, Read-only             | routes.view_auditentry              |
| users.change     | Administrator                                  | auth.change_user                    |
| webhooks.view    | Administrator                                  | webhooks.view_webhook               |
| webhooks.change  | Administrator                                  | webhooks.change_webhook             |
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from django.core.exceptions import PermissionDenied
from django.http import HttpRequest
from django.http.response import HttpResponseBase

CAPABILITIES: dict[str, tuple[str, ...]] = {
    "dashboard.view": ("delivery.view_hoststatus",),
    "hosts.view": ("delivery.view_hoststatus",),
    "hosts.change": ("delivery.change_hoststatus",),
    "queue.view": ("delivery.view_hoststatus", "delivery.view_recipient"),
    "queue.change": ("delivery.change_recipient",),
    "maillog.view": ("delivery.view_maillogline",),
    "tracking.view": ("delivery.view_message",),
    "message.raw": ("delivery.view_messagebody",),
    "routes.view": ("routes.view_route",),
    "routes.change": ("routes.change_route",),
    "destinations.view": ("routes.view_destinationcontrol",),
    "destinations.change": ("routes.change_destinationcontrol",),
    "access.view": ("routes.view_recipientaccessrule",),
    "access.change": ("routes.change_recipientaccessrule",),
    "bounceprofiles.view": ("delivery.view_bounceprofile",),
    "bounceprofiles.change": ("delivery.change_bounceprofile",),
    "authprofiles.view": ("routes.view_authprofile",),
    "authprofiles.change": ("routes.change_authprofile",),
    "audit.view": ("routes.view_auditentry",),
    "users.change": ("auth.change_user",),
    "webhooks.view": ("webhooks.view_webhook",),
    "webhooks.change": ("webhooks.change_webhook",),
}

P = ParamSpec("P")
R = TypeVar("R", bound=HttpResponseBase)


def can(user: Any, capability: str) -> bool:
    """True when the user holds every Django permission the capability needs (superusers always do)."""
    try:
        perms = CAPABILITIES[capability]
    except KeyError:
        raise ValueError(f"unknown capability {capability!r}") from None
    if not getattr(user, "is_authenticated", False) or not getattr(user, "is_active", False):
        return False
    return bool(user.has_perms(perms))


def check(user: Any, capability: str) -> None:
    """Raise PermissionDenied (a 403) unless the user holds the capability."""
    if not can(user, capability):
        raise PermissionDenied(f"this needs the {capability} permission")


def require(*capabilities: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """View decorator: 403 unless the user holds every capability (the login itself is the middleware's job)."""
    for c in capabilities:
        if c not in CAPABILITIES:
            raise ValueError(f"unknown capability {c!r}")

    def decorator(view: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(view)
        def wrapped(*args: P.args, **kwargs: P.kwargs) -> R:
            request = args[0]
            assert isinstance(request, HttpRequest)
            for c in capabilities:
                check(request.user, c)
            return view(*args, **kwargs)

        return wrapped

    return decorator


class _Capabilities:
    """`{{ can.queue_change }}` in templates, computed once per request (has_perm caches per user)."""

    def __init__(self, user: Any) -> None:
        self._user = user

    def __getattr__(self, name: str) -> bool:
        capability = name.replace("_", ".", 1)
        if capability not in CAPABILITIES:
            raise AttributeError(name)
        return can(self._user, capability)

    def __getitem__(self, name: str) -> bool:
        return self.__getattr__(name)


def capabilities(request: HttpRequest) -> dict[str, Any]:
    """Template context processor: `can`."""
    return {"can": _Capabilities(getattr(request, "user", None))}
