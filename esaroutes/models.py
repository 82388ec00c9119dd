"""The project's own table, and the abstract base the apps' models share.

`Timestamped`: `created_at` and `updated_at`, which Django sets on insert and on every save.

API tokens (the REST API's `Authorization: Bearer` credentials, esaroutes/api/auth.py).

A token belongs to a user and acts with that user's role, exactly as the pages do; it may be read-only (GET only)
and may expire. Only a SHA-256 digest of the secret is stored: the secret is shown once, when it is made
(`esaroutes.apitokens.create`), and cannot be read back. `prefix` (the secret's first characters) tells tokens
apart in lists without revealing them.
"""

from __future__ import annotations

from datetime import datetime

from django.conf import settings
from django.db import models
from django_stubs_ext.db.models import TypedModelMeta


class Timestamped(models.Model):
    """When a row was made and last saved (`Model.save` sets both; a queryset `update()` must set `updated_at`)."""

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta(TypedModelMeta):
        abstract = True


class ApiToken(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=64, unique=True, help_text="Names the token in lists and the audit log")
    prefix = models.CharField(max_length=16)
    digest = models.CharField(max_length=64, unique=True)  # SHA-256 of the secret, hex
    read_only = models.BooleanField(default=False)
    created_at = models.DateTimeField()
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now

    @property
    def actor_name(self) -> str:
        """The audit log's actor for a change made with this token: `api:<user>/<token name>`."""
        return f"api:{self.user.get_username()}/{self.name}"
