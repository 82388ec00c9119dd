"""The Celery app, wired the standard Django way (`celery -A esaroutes worker`, `celery -A esaroutes beat`)."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "esaroutes.settings")

app = Celery("esaroutes")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
