"""`/api/v1/bounce-profiles/`: retries, queue lifetime, DSNs and delay warnings, as Admin > Bounce profiles edits
them, through `delivery.bounce_profiles` (the model's checks, the audit). `bounceprofiles.view` reads,
`bounceprofiles.change` writes. The "Default" profile cannot be deleted (409) nor renamed (400 at `name`); a
profile routes name cannot be deleted (409, naming them); destination controls naming a deleted one lose it.
"""

from __future__ import annotations

from typing import Any

from django.db import models
from django.db.models import ProtectedError
from drf_spectacular.utils import OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers
from rest_framework.request import Request

from delivery import bounce_profiles
from delivery.models import BounceProfile
from esaroutes.api import errors, views

INT_MAX = 2**31 - 1  # what the integer columns hold; the rules within it are the model's


def _model_field(name: str) -> Any:
    return BounceProfile._meta.get_field(name)


def _described(field: models.Field[Any, Any]) -> str:
    label = str(field.verbose_name)
    return f"{label[:1].upper()}{label[1:]}" + (f": {field.help_text}" if field.help_text else "")


def _number(name: str) -> serializers.IntegerField:
    field = _model_field(name)
    return serializers.IntegerField(
        min_value=0, max_value=INT_MAX, default=field.get_default(), help_text=_described(field)
    )


def _switch(name: str) -> serializers.BooleanField:
    field = _model_field(name)
    return serializers.BooleanField(default=field.get_default(), help_text=_described(field))


class BounceProfileSerializer(serializers.Serializer[BounceProfile]):
    """A bounce profile as it reads and as it is written (PUT: the model's defaults for the fields left out)."""

    id = serializers.IntegerField(read_only=True)
    is_default = serializers.SerializerMethodField()
    name = serializers.CharField(max_length=64, help_text='Unique; "Default" is the profile of every route without one')
    max_retries = _number("max_retries")
    max_queue_lifetime = _number("max_queue_lifetime")
    initial_retry = _number("initial_retry")
    max_retry_timeout = _number("max_retry_timeout")
    send_bounces = _switch("send_bounces")
    send_warnings = _switch("send_warnings")
    warning_interval = _number("warning_interval")
    warning_max = _number("warning_max")
    after_possible_delivery = serializers.ChoiceField(
        choices=BounceProfile.AfterPossibleDelivery.choices,
        default=BounceProfile.AfterPossibleDelivery.RESEND,
        help_text=_described(_model_field("after_possible_delivery")),
    )

    def get_is_default(self, profile: BounceProfile) -> bool:
        return profile.name == BounceProfile.DEFAULT_NAME


class _Profiles(views.RowsView):
    read_capability = "bounceprofiles.view"
    write_capability = "bounceprofiles.change"
    serializer_class = BounceProfileSerializer
    model = BounceProfile


class BounceProfileList(_Profiles, views.CollectionView):
    def create(self, request: Request, data: dict[str, Any]) -> BounceProfile:
        with errors.model_checks():
            return bounce_profiles.create(values=data, actor=views.actor(request))


@extend_schema_view(
    delete=extend_schema(
        responses={
            204: None,
            409: OpenApiResponse(description="The Default profile, or one that routes use, cannot be deleted"),
        }
    )
)
class BounceProfileDetail(_Profiles, views.ObjectView):
    def change(self, request: Request, obj: BounceProfile, data: dict[str, Any], *, partial: bool) -> None:
        with errors.model_checks():
            bounce_profiles.update(profile_id=obj.pk, changes=data, actor=views.actor(request))

    def remove(self, request: Request, obj: BounceProfile) -> None:
        try:
            bounce_profiles.delete(profile_id=obj.pk, actor=views.actor(request))
        except bounce_profiles.DefaultProfileProtected as exc:
            raise errors.Conflict(str(exc)) from None
        except ProtectedError as exc:
            raise errors.in_use("bounce profile", exc.protected_objects) from None
