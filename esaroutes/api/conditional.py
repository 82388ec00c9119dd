"""ETags on reads, If-Match on writes: a script cannot silently overwrite a change made meanwhile in the browser.

An object's ETag is a digest of its JSON representation (what GET answers), so any change to what the caller saw
changes it, whatever the model. `ApiView` sets `ETag` on every successful GET. A write to an existing object
(PUT, PATCH, DELETE, or a POST acting on it) calls `require_match(request, representation)` with the object's
current representation, inside the transaction that makes the change and with the row locked:
- no If-Match: 428 Precondition Required (a script that never read cannot claim to know what it overwrites);
  `If-Match: *` is the explicit "overwrite whatever is there";
- an If-Match naming no current ETag: 412 Precondition Failed, nothing changed.
Creating (POST to a collection) needs no If-Match.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from rest_framework.request import Request

from esaroutes.api import errors


def etag(representation: Any) -> str:
    """A strong ETag for a JSON-able representation: the same data always gives the same tag."""
    text = json.dumps(representation, sort_keys=True, separators=(",", ":"), default=str)
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def require_match(request: Request, representation: Any) -> None:
    """Raise 428 without If-Match, 412 when If-Match names no current version of `representation`."""
    header = request.headers.get("If-Match", "").strip()
    if not header:
        raise errors.PreconditionRequired()
    if header == "*":
        return
    tags = [tag.strip() for tag in header.split(",")]
    if etag(representation) not in tags:
        raise errors.PreconditionFailed()
