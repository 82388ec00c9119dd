"""`manage.py apitoken create USERNAME [--name NAME] [--read-only] [--expires DAYS]` / `revoke NAME` / `list`.

`create` prints the token, once, alone on standard output (so `TOKEN=$(manage.py apitoken create alice)` works);
what was made goes to standard error. The token acts with USERNAME's role. Changes are audited as `cli:<unix user>`.
"""

from __future__ import annotations

import secrets
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from esaroutes import apitokens
from esaroutes.models import ApiToken
from routes import audit


class Command(BaseCommand):
    help = "Create, revoke and list REST API tokens."

    def add_arguments(self, parser: CommandParser) -> None:
        sub = parser.add_subparsers(dest="action", required=True)
        create = sub.add_parser("create", help="make a token for USERNAME and print it once")
        create.add_argument("username")
        create.add_argument("--name", default="", help="the token's name (default: USERNAME-cli-XXXX)")
        create.add_argument("--read-only", action="store_true", help="GET requests only")
        create.add_argument("--expires", type=int, metavar="DAYS", help="expire after DAYS days (default: never)")
        revoke = sub.add_parser("revoke", help="revoke the token NAME")
        revoke.add_argument("name")
        sub.add_parser("list", help="list the tokens (never their secrets)")

    def handle(self, *args: Any, **options: Any) -> None:
        action = options["action"]
        if action == "create":
            self._create(options)
        elif action == "revoke":
            if not apitokens.revoke(name=options["name"], actor=audit.cli_actor()):
                raise CommandError(f"no token named {options['name']!r}")
            self.stderr.write(f"revoked {options['name']}")
        else:
            self._list()

    def _create(self, options: dict[str, Any]) -> None:
        user = get_user_model().objects.filter(username=options["username"]).first()
        if user is None:
            raise CommandError(f"no user named {options['username']!r}")
        name = options["name"] or f"{user.get_username()}-cli-{secrets.token_hex(2)}"
        try:
            made = apitokens.create(
                user=user,
                name=name,
                read_only=options["read_only"],
                expires_days=options["expires"],
                actor=audit.cli_actor(),
            )
        except apitokens.TokenInvalid as exc:
            raise CommandError(
                f"--{exc.field}: {exc}" if exc.field != "name" or options["name"] else str(exc)
            ) from None
        token = made.token
        expiry = f", expires {token.expires_at:%Y-%m-%d %H:%M} UTC" if token.expires_at else ""
        self.stderr.write(
            f"token {token.name} for {user.get_username()}{' (read-only)' if token.read_only else ''}{expiry}"
        )
        self.stdout.write(made.secret)

    def _list(self) -> None:
        now = timezone.now()
        for token in ApiToken.objects.select_related("user").order_by("name"):
            state = (
                "expired"
                if token.expired(now)
                else (f"expires {token.expires_at:%Y-%m-%d}" if token.expires_at else "no expiry")
            )
            used = f"{token.last_used_at:%Y-%m-%d %H:%M}" if token.last_used_at else "never used"
            scope = "read-only" if token.read_only else "read-write"
            self.stdout.write(f"{token.name}\t{token.user.get_username()}\t{token.prefix}…\t{scope}\t{state}\t{used}")
