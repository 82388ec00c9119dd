"""`{{ line.text|linkify_ids }}`: a mail log line, escaped, with each MID, ICID and DCID made a link to its story.

The text is escaped first and only then are the numbers (digits only, so nothing from the line can reach the
markup unescaped) wrapped in links; raw text is never marked safe.
"""

from __future__ import annotations

import re

from django import template
from django.urls import reverse
from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

register = template.Library()

_IDS = re.compile(r"\b(MID|ICID|DCID) (\d{1,18})\b")


def _href(kind: str, number: str) -> str:
    if kind == "MID":
        return reverse("delivery:message-detail", args=[int(number)])
    return reverse("delivery:maillog") + f"?{kind.lower()}={int(number)}"


@register.filter
def linkify_ids(text: object) -> SafeString:
    escaped = str(escape(str(text)))

    def link(m: re.Match[str]) -> str:
        kind, number = m.group(1), m.group(2)
        return f'{kind} <a href="{escape(_href(kind, number))}" class="id-link">{number}</a>'

    return mark_safe(_IDS.sub(link, escaped))  # escaped above; only digits and our URLs added
