"""Web login with a rate limit: repeated failures from one client address or for one username are refused a while.

The limit sits in the authentication backend (`ThrottledModelBackend`, the only one in AUTHENTICATION_BACKENDS),
so every way in that calls `authenticate()` shares one set of counters (`esaroutes.throttle`, scope `WEB`): the
site's `/login/`, the admin's `/admin/login/`, and whatever comes later. A locked attempt never reaches the
password check; the login pages answer it with 429 and the lockout message in their own layout.
"""

from __future__ import annotations

import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.contrib import admin
from django.contrib.admin.forms import AdminAuthenticationForm
from django.contrib.auth import views as auth_views
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.decorators import login_not_required
from django.contrib.auth.forms import AuthenticationForm
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse

from esaroutes import throttle

logger = logging.getLogger(__name__)

_REFUSAL = "_esaroutes_throttle_refusal"


def client_address(request: HttpRequest | None) -> str:
    return request.META.get("REMOTE_ADDR", "") if request is not None else ""


def refusal_of(request: HttpRequest | None) -> throttle.Refusal | None:
    """The lockout that refused this request's login, if one did."""
    found: throttle.Refusal | None = getattr(request, _REFUSAL, None)
    return found


def lockout_message(refusal: throttle.Refusal) -> str:
    return f"Too many failed logins. Try again in {refusal.minutes} minutes."


class ThrottledModelBackend(ModelBackend):
    """Django's username/password check behind the throttle. A locked attempt raises PermissionDenied, which makes
    `authenticate()` stop (no other backend is asked) and send `user_login_failed` as for any failure."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> User | None:
        if username is None:
            username = kwargs.get(self._username_field())
        if username is None or password is None:
            return None  # not a password login: nothing to count
        address = client_address(request)
        found: list[User | None] = []

        def password_ok() -> bool:
            found.append(super(ThrottledModelBackend, self).authenticate(request, username, password, **kwargs))
            return found[-1] is not None

        outcome = throttle.attempt(throttle.WEB, address, username, password_ok)
        counts = outcome.counts
        if outcome.refusal is not None:
            logger.warning(
                "login refused for %r from %s: too many failed logins (address %d, username %d; limit %d, %ds)",
                username,
                address or "-",
                counts.address,
                counts.username,
                throttle.policy(throttle.WEB).max_failures,
                outcome.refusal.lockout,
            )
            if request is not None:
                setattr(request, _REFUSAL, outcome.refusal)
            raise PermissionDenied(lockout_message(outcome.refusal))
        if not outcome.ok:
            log = logger.warning if outcome.locked_now else logger.info
            log(
                "login failed for %r from %s (address %d, username %d failures)%s",
                username,
                address or "-",
                counts.address,
                counts.username,
                ": too many failed logins, now refused" if outcome.locked_now else "",
            )
        return found[-1] if found else None

    async def aauthenticate(
        self, request: HttpRequest | None, username: str | None = None, password: str | None = None, **kwargs: Any
    ) -> User | None:
        """ModelBackend's async twin checks the password on its own: send it through the throttle too."""
        return await sync_to_async(self.authenticate)(request, username, password, **kwargs)

    def _username_field(self) -> str:
        from django.contrib.auth import get_user_model

        return str(get_user_model().USERNAME_FIELD)


class _Throttled(AuthenticationForm):
    """A login form that says so when the throttle, not the password, refused the login."""

    def clean(self) -> dict[str, Any]:
        try:
            return super().clean()
        except ValidationError:
            refusal = refusal_of(self.request)
            if refusal is None:
                raise
            raise ValidationError(lockout_message(refusal), code="throttled") from None


class LoginForm(_Throttled):
    pass


class AdminLoginForm(_Throttled, AdminAuthenticationForm):
    pass


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True
    authentication_form = LoginForm

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        response = super().form_invalid(form)
        if refusal_of(self.request) is not None:
            response.status_code = 429
        return response


admin.site.login_form = AdminLoginForm


@login_not_required
def admin_login(request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
    """The admin's own login page and form (AdminLoginForm), answering 429 when the throttle refused."""
    response = admin.site.login(request, extra_context)
    if refusal_of(request) is not None:
        response.status_code = 429
    return response
