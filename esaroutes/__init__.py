"""esaroutes: SMTP routes, failover and an ESA-style mail log. Importing the package loads the Celery app."""

from __future__ import annotations

from esaroutes.celery import app as celery_app

__all__ = ("celery_app",)
