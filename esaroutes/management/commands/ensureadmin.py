"""Make sure the `admin` superuser exists.

The password comes from ESAROUTES_ADMIN_PASSWORD when set (and is reset to it on every run, so the environment
stays the truth); otherwise a random one is made once, printed once and kept in <data dir>/admin-password (0600).
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError


class Command(BaseCommand):
    help = "Create the admin superuser if it does not exist (see ESAROUTES_ADMIN_PASSWORD)."

    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        wanted = os.environ.get("ESAROUTES_ADMIN_PASSWORD", "")
        if wanted and len(wanted) < 10:
            raise CommandError("ESAROUTES_ADMIN_PASSWORD: use at least 10 characters")
        user = User.objects.filter(username="admin").first()
        if user is not None:
            if wanted and not user.check_password(wanted):
                user.set_password(wanted)
                user.save(update_fields=["password"])
                self.stdout.write("admin: password set from ESAROUTES_ADMIN_PASSWORD")
            return
        password = wanted or secrets.token_urlsafe(12)
        User.objects.create_superuser("admin", email="", password=password)
        if wanted:
            self.stdout.write("admin: created with the password from ESAROUTES_ADMIN_PASSWORD")
            return
        path = settings.DATA_DIR / "admin-password"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        path.chmod(0o600)
        self.stdout.write(self.style.SUCCESS(f"admin: created; password {password} (also in {path}, mode 0600)"))
