"""Serve the web UI with gunicorn on ESAROUTES_WEB_LISTEN (static files by WhiteNoise).

gunicorn manages the worker processes; each reads requests in Hypercorn's event loop and runs Django in threads
only once a request has fully arrived (esaroutes/webserver.py), so slow clients cannot hold the threads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the web UI under gunicorn on ESAROUTES_WEB_LISTEN."

    def handle(self, *args: Any, **options: Any) -> None:
        host, port = settings.ESAROUTES_WEB_LISTEN
        bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        argv = [
            gunicorn,
            "esaroutes.wsgi:application",
            "--bind",
            bind,
            "--workers",
            str(settings.ESAROUTES_WEB_WORKERS),
            "--worker-class",
            "esaroutes.webserver.HypercornWorker",
            "--threads",
            "8",  # Django's threads in each worker process
            "--graceful-timeout",
            "10",
            "--no-control-socket",
        ]
        sys.stdout.flush()
        os.execv(gunicorn, argv)
