"""`POST /api/v1/messages` (injection) and `/api/v1/webhooks` (CRUD), thin over the intake and the services.

Injection takes either a raw RFC 5322 message (`Content-Type: message/rfc822`, the envelope in the query:
`?sender=a@b&recipient=x@y&recipient=...`) or JSON `{"sender": ..., "recipients": [...], "message": "..."}`
(`message_base64` for 8-bit bodies); it answers 201 with the MID once the message is committed.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from django.conf import settings
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.parsers import BaseParser, JSONParser
from rest_framework.request import Request
from rest_framework.response import Response

from delivery.listener import inject
from delivery.models import MailLogLine
from delivery.webhooks import services as webhook_services
from delivery.webhooks.models import Webhook, WebhookAttempt
from esaroutes import numbers
from esaroutes.api import errors, views
from esaroutes.models import ApiToken


class RawMessageParser(BaseParser):
    """`message/rfc822`: the body is the message, as bytes."""

    media_type = "message/rfc822"

    def parse(  # type: ignore[override]
        self, stream: Any, media_type: str | None = None, parser_context: Any = None
    ) -> bytes:
        return bytes(stream.read()) if stream is not None else b""


class InjectSerializer(serializers.Serializer[Any]):
    sender = serializers.CharField(allow_blank=True, max_length=998, help_text='Envelope sender; "" is <>')
    recipients = serializers.ListField(child=serializers.CharField(max_length=998), allow_empty=False)
    message = serializers.CharField(required=False, trim_whitespace=False, help_text="The RFC 5322 message as text")
    message_base64 = serializers.CharField(required=False, help_text="The message as base64 (8-bit bodies)")


class InjectedSerializer(serializers.Serializer[Any]):
    mid = serializers.IntegerField()
    icid = serializers.IntegerField()


def _user_name(request: Request) -> str:
    token = views.actor(request)
    if isinstance(token, ApiToken):
        return token.actor_name
    return f"api:{request.user.get_username()}"


class MessageInject(views.ApiView):
    read_capability = ""  # nothing to read here
    write_capability = "queue.change"
    parser_classes = [JSONParser, RawMessageParser]

    @property
    def max_body_bytes(self) -> int:  # type: ignore[override]
        """The listener's size limit, plus room for base64 and the JSON around it (the size is checked again)."""
        return int(settings.ESAROUTES_SMTP_MAX_MESSAGE_SIZE * 4 / 3) + 65536

    @extend_schema(
        request={"application/json": InjectSerializer, "message/rfc822": bytes},
        parameters=[
            OpenApiParameter("sender", str, description="with message/rfc822: the envelope sender"),
            OpenApiParameter("recipient", str, many=True, description="with message/rfc822: each recipient"),
        ],
        responses={201: InjectedSerializer},
    )
    def post(self, request: Request) -> Response:
        payload: Any = request.data  # bytes from RawMessageParser, a dict from JSON
        if isinstance(payload, bytes):
            sender = request.query_params.get("sender", "")
            recipients = request.query_params.getlist("recipient")
            raw = payload
        else:
            data = InjectSerializer(data=payload)
            data.is_valid(raise_exception=True)
            sender = data.validated_data["sender"]
            recipients = data.validated_data["recipients"]
            if "message_base64" in data.validated_data:
                try:
                    raw = base64.b64decode(data.validated_data["message_base64"], validate=True)
                except (binascii.Error, ValueError):
                    raise errors.invalid("message_base64", "Not valid base64.") from None
            elif "message" in data.validated_data:
                raw = data.validated_data["message"].encode("utf-8", "surrogateescape")
            else:
                raise errors.invalid("message", "Give the message (message or message_base64).")
        try:
            injected = inject.inject(
                sender=sender,
                recipients=recipients,
                raw=raw,
                client_ip=str(request.META.get("REMOTE_ADDR") or ""),
                user=_user_name(request),
                tls=request.is_secure(),
            )
        except inject.Refused as exc:
            if exc.status == 422:
                raise errors.invalid(exc.field, str(exc)) from None
            return errors.problem(exc.status, str(exc), errors=[{"field": exc.field, "detail": str(exc)}])
        return Response(InjectedSerializer(injected).data, status=201)


# --- webhooks -----------------------------------------------------------------------------------------------


class WebhookSerializer(serializers.ModelSerializer[Webhook]):
    events = serializers.ListField(child=serializers.ChoiceField(choices=Webhook.Event.choices), allow_empty=False)
    secret = serializers.CharField(write_only=True, required=False, allow_blank=True, max_length=200)

    class Meta:
        model = Webhook
        fields = ["id", "name", "url", "events", "enabled", "secret", "created_at", "updated_at"]
        read_only_fields = ["id", "created_at", "updated_at"]


class WebhookCreatedSerializer(WebhookSerializer):
    secret = serializers.CharField(read_only=True, help_text="Shown once, in the answer to the creation")

    class Meta(WebhookSerializer.Meta):
        pass


class WebhookAttemptSerializer(serializers.ModelSerializer[WebhookAttempt]):
    event_name = serializers.CharField(source="event.event", read_only=True)

    class Meta:
        model = WebhookAttempt
        fields = ["id", "event", "event_name", "at", "status", "error", "seconds"]


class _Webhooks(views.RowsView):
    read_capability = "webhooks.view"
    write_capability = "webhooks.change"
    serializer_class = WebhookSerializer
    model = Webhook


class WebhookList(_Webhooks, views.CollectionView):
    @extend_schema(request=WebhookSerializer, responses={201: WebhookCreatedSerializer})
    def post(self, request: Request) -> Response:  # the answer shows the secret, once: no ETag, no Location
        with errors.model_checks():
            hook = webhook_services.create(actor=views.actor(request), **self.validated(request))
        return Response(WebhookCreatedSerializer(hook).data, status=201)


class WebhookDetail(_Webhooks, views.ObjectView):
    def change(self, request: Request, obj: Webhook, data: dict[str, Any], *, partial: bool) -> None:
        with errors.model_checks():
            webhook_services.update(hook=obj, actor=views.actor(request), **data)

    def remove(self, request: Request, obj: Webhook) -> None:
        webhook_services.delete(obj, actor=views.actor(request))


class WebhookAttempts(views.ApiView):
    read_capability = "webhooks.view"
    keyset_descending = True

    @extend_schema(responses=WebhookAttemptSerializer(many=True))
    def get(self, request: Request, pk: int) -> Response:
        hook = get_object_or_404(Webhook, pk=pk)
        rows = self.paginate_queryset(WebhookAttempt.objects.filter(webhook=hook).select_related("event"))
        return self.get_paginated_response(WebhookAttemptSerializer(rows, many=True).data)


# --- the mail log, by id ---------------------------------------------------------------------------------


_IDS = ("mid", "icid", "dcid")


class MailLogLineSerializer(serializers.ModelSerializer[MailLogLine]):
    class Meta:
        model = MailLogLine
        fields = ["id", "at", "level", "text", "mid", "icid", "dcid"]


class MailLog(views.ApiView):
    """The mail log, oldest first, keyset by id (`?after=ID`); `?mid=`, `?icid=`, `?dcid=` narrow it."""

    read_capability = "maillog.view"

    @extend_schema(
        parameters=[OpenApiParameter(name, int, description=f"only the lines of this {name.upper()}") for name in _IDS],
        responses=MailLogLineSerializer(many=True),
    )
    def get(self, request: Request) -> Response:
        rows = MailLogLine.objects.all()
        for name in _IDS:
            value = request.query_params.get(name)
            if value is not None:
                number = numbers.whole(value)
                if number is None:
                    raise errors.invalid(name, f"Use a whole number from 0 to {numbers.MAX_ID}.")
                rows = rows.filter(**{name: number})
        page = self.paginate_queryset(rows)
        return self.get_paginated_response(MailLogLineSerializer(page, many=True).data)
