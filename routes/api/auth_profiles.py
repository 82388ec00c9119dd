"""`/api/v1/auth-profiles/`: the outgoing SMTP AUTH profiles (the credentials a route logs in to its hosts with),
through `routes.auth_profiles` as Admin > Auth profiles does (the same checks, the same audit, the route table
version bumped). `authprofiles.view` reads, `authprofiles.change` writes.

The `password` is write-only: stored encrypted, never in an answer, an ETag or the audit log (`has_password`
says whether one is stored). A new profile needs one; a PUT or PATCH without it (or with "") keeps the stored one.
A profile that routes use cannot be deleted (409, naming them).
"""

from __future__ import annotations

from typing import Any

from django.db.models import ProtectedError
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.request import Request

from esaroutes.api import errors, views
from routes import auth_profiles
from routes.models import AuthProfile


class AuthProfileSerializer(serializers.Serializer[AuthProfile]):
    """An auth profile as it reads (no password, ever) and as it is written (the password only written)."""

    id = serializers.IntegerField(read_only=True)
    name = serializers.CharField(max_length=64, help_text="Unique: what the routes' auth profile choice shows")
    username = serializers.CharField(max_length=255, help_text="The SMTP AUTH user name towards the route's hosts")
    password = serializers.CharField(
        max_length=1024,
        write_only=True,
        required=False,
        allow_blank=True,
        trim_whitespace=False,
        help_text='Write-only, stored encrypted; a new profile needs one; omitted or "" keeps the stored one',
    )
    has_password = serializers.SerializerMethodField()
    updated_at = serializers.DateTimeField(read_only=True)

    def get_has_password(self, profile: AuthProfile) -> bool:
        return bool(profile.password_encrypted)


def _saved(request: Request, profile_id: int | None, data: dict[str, Any]) -> AuthProfile:
    """Create (profile_id None) or update through the service; no password (or "") keeps the stored one."""
    with errors.model_checks():
        return auth_profiles.save(
            profile_id=profile_id,
            name=data["name"],
            username=data["username"],
            password=data.get("password") or None,
            actor=views.actor(request),
        )


class _Profiles(views.RowsView):
    read_capability = "authprofiles.view"
    write_capability = "authprofiles.change"
    serializer_class = AuthProfileSerializer
    model = AuthProfile


class AuthProfileList(_Profiles, views.CollectionView):
    def create(self, request: Request, data: dict[str, Any]) -> AuthProfile:
        return _saved(request, None, data)


@extend_schema_view(
    delete=extend_schema(
        responses={204: None, 409: OpenApiResponse(description="Routes use this profile: it cannot be deleted")}
    )
)
class AuthProfileDetail(_Profiles, views.ObjectView):
    def change(self, request: Request, obj: AuthProfile, data: dict[str, Any], *, partial: bool) -> None:
        _saved(request, obj.pk, {"name": obj.name, "username": obj.username, **data} if partial else data)

    def remove(self, request: Request, obj: AuthProfile) -> None:
        try:
            auth_profiles.delete(profile_id=obj.pk, actor=views.actor(request))
        except ProtectedError as exc:
            raise errors.in_use("auth profile", exc.protected_objects) from None
