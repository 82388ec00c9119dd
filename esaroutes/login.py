"""Login with a rate limit: repeated failures from one client address or for one username are refused for a while.

Counters live in the cache (Redis in production, so every web server shares them; a file cache on the embedded
default). A refused attempt answers 429 with a plain message and never reaches the password check.
"""

from __future__ import annotations

import hashlib
from typing import Any

from django.conf import settings
from django.contrib.auth import views as auth_views
from django.contrib.auth.forms import AuthenticationForm
from django.core.cache import cache
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def _keys(request: HttpRequest, username: str) -> list[str]:
    address = request.META.get("REMOTE_ADDR", "unknown")
    user_hash = hashlib.sha256(username.strip().lower().encode()).hexdigest()[:32]
    return [f"esaroutes:login-fail:ip:{address}", f"esaroutes:login-fail:user:{user_hash}"]


def is_locked(request: HttpRequest, username: str) -> bool:
    limit = settings.ESAROUTES_LOGIN_MAX_FAILURES
    return any((cache.get(key) or 0) >= limit for key in _keys(request, username))


def record_failure(request: HttpRequest, username: str) -> None:
    window = settings.ESAROUTES_LOGIN_LOCKOUT
    for key in _keys(request, username):
        if not cache.add(key, 1, timeout=window):
            try:
                cache.incr(key)
            except ValueError:  # expired between add and incr
                cache.add(key, 1, timeout=window)


def clear_failures(request: HttpRequest, username: str) -> None:
    cache.delete_many(_keys(request, username))


class LoginView(auth_views.LoginView):
    redirect_authenticated_user = True

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        username = request.POST.get("username", "")
        if is_locked(request, username):
            minutes = max(1, settings.ESAROUTES_LOGIN_LOCKOUT // 60)
            context = {
                "form": AuthenticationForm(request, initial={"username": username}),
                "lockout": f"Too many failed logins. Try again in {minutes} minutes.",
                "next": self.get_redirect_url(),
            }
            return render(request, "registration/login.html", context, status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: AuthenticationForm) -> HttpResponse:
        record_failure(self.request, self.request.POST.get("username", ""))
        return super().form_invalid(form)

    def form_valid(self, form: AuthenticationForm) -> HttpResponse:
        clear_failures(self.request, form.get_user().get_username())
        return super().form_valid(form)
