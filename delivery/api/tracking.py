"""`GET /api/v1/messages/{mid}/` (what the tracking page shows of a message) and `.../raw` (administrators)."""

from __future__ import annotations

from typing import Any

from django.http import Http404, HttpResponse
from django.shortcuts import get_object_or_404
from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from delivery.models import DeliveryAttempt, MailLogLine, Message, Recipient
from delivery.monitor import selectors
from esaroutes.api import views


class _Recipient(serializers.ModelSerializer[Recipient]):
    class Meta:
        model = Recipient
        fields = ["id", "rid", "address", "domain", "state", "held", "attempts", "last_code", "last_response"]


class _Attempt(serializers.ModelSerializer[DeliveryAttempt]):
    class Meta:
        model = DeliveryAttempt
        fields = ["id", "recipient", "at", "host", "code", "outcome"]


class _Line(serializers.ModelSerializer[MailLogLine]):
    class Meta:
        model = MailLogLine
        fields = ["id", "at", "level", "text"]


class MessageDetailSerializer(serializers.Serializer[Any]):
    mid = serializers.IntegerField(source="message.pk")
    sender = serializers.CharField(source="message.sender")
    received_at = serializers.DateTimeField(source="message.received_at")
    state = serializers.CharField(source="message.state")
    headers = serializers.ListField(child=serializers.ListField(child=serializers.CharField()))
    recipients = _Recipient(many=True)
    attempts = _Attempt(many=True)
    lines = _Line(many=True)
    lines_capped = serializers.BooleanField()


class MessageDetail(views.ApiView):
    read_capability = "tracking.view"

    @extend_schema(responses=MessageDetailSerializer)
    def get(self, request: Request, mid: int) -> Response:
        story = selectors.message_story(get_object_or_404(Message, pk=mid))
        return Response(MessageDetailSerializer(story).data)


class MessageRaw(views.ApiView):
    """The stored message as received, `message/rfc822`; administrators only, as the page's raw view."""

    read_capability = "message.raw"

    @extend_schema(responses={(200, "message/rfc822"): bytes})
    def get(self, request: Request, mid: int) -> HttpResponse:
        message = get_object_or_404(Message.objects.select_related("body"), pk=mid)
        try:
            data = bytes(message.body.data)
        except Message.body.RelatedObjectDoesNotExist:
            raise Http404("the message body is gone") from None
        response = HttpResponse(data, content_type="message/rfc822")
        response["Content-Disposition"] = f'attachment; filename="mid-{message.pk}.eml"'
        return response
