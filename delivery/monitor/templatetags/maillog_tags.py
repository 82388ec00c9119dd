"""`{{ line.text|linkify_ids }}`: a mail log line, escaped, with each MID, ICID and DCID made a link to its story.

The text is escaped first and only then are the numbers (digits only, so nothing from the line can reach the
markup unescaped) wrapped in links; raw text is never marked safe.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from datetime import UTC
from typing import Any

from django import template
from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

_IDS = re.compile(r"\b(MID|ICID|DCID) (\d{1,18})\b")


@functools.cache
def _prefixes() -> tuple[str, str]:
    # reverse() once: the message page is ".../tracking/<mid>/", the log page takes ?mid=/?icid=/?dcid=
    return reverse("delivery:message-detail", args=[0])[:-2], reverse("delivery:maillog")


def _href(kind: str, number: str) -> str:
    message, log = _prefixes()
    if kind == "MID":
        return f"{message}{int(number)}/"
    return f"{log}?{kind.lower()}={int(number)}"


@register.filter
def linkify_ids(text: object) -> SafeString:
    escaped = str(escape(str(text)))

    def link(m: re.Match[str]) -> str:
        kind, number = m.group(1), m.group(2)
        return f'{kind} <a href="{escape(_href(kind, number))}" class="id-link">{number}</a>'

    return mark_safe(_IDS.sub(link, escaped))  # escaped above; only digits and our URLs added


_LEVEL_CLASS = {"Info": "lvl-info", "Warning": "lvl-warning", "Critical": "lvl-critical", "Debug": "lvl-debug"}


@register.simple_tag
def log_lines(lines: Iterable[Any], with_ids: bool = True) -> SafeString:
    """Many log lines at once (the log page renders up to ESAROUTES_LOG_PAGE_ROWS per response): one string
    build instead of an include per line. Same escaping rules as `linkify_ids`; `at` is shown in UTC."""
    out = []
    for line in lines:
        at = line.at.astimezone(UTC)
        stamp = f"{at:%a %b} {at.day} {at:%H:%M:%S %Y}"
        data = f' data-id="{int(line.pk)}"' if with_ids else ""
        level = str(escape(line.level))
        out.append(
            f'<div class="line"{data}><time datetime="{at.isoformat()}">{stamp}</time> '
            f'<span class="lvl {_LEVEL_CLASS.get(line.level, "")}">{level}:</span> {linkify_ids(line.text)}</div>'
        )
    return mark_safe("".join(out))  # every value above is escaped or a number
