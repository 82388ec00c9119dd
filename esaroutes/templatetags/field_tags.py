"""A form field's error where the field is, for templates that write their inputs by hand (the filter bars).

`<input name="mid" ...{{ form.mid|invalid }}>` marks the input invalid and points it at its message
(`{{ form.since|invalid:"date-help" }}` also at the help text);
`{% field_error form.mid %}` writes the message (nothing when the field is fine).
"""

from __future__ import annotations

from django import template
from django.forms import BoundField
from django.utils.html import format_html
from django.utils.safestring import SafeString

register = template.Library()


@register.filter
def invalid(field: BoundField, also: str = "") -> SafeString | str:
    """`aria-invalid` and `aria-describedby` for a hand-written input; `also` names more describing ids (a help
    text), so the input carries one aria-describedby whether it has an error or not."""
    ids = " ".join(x for x in (f"{field.auto_id}-error" if field.errors else "", also) if x)
    invalid = ' aria-invalid="true"' if field.errors else ""
    return format_html('{} aria-describedby="{}"', SafeString(invalid), ids) if ids else ""


@register.simple_tag
def field_error(field: BoundField) -> SafeString | str:
    if not field.errors:
        return ""
    return format_html(
        '<span class="field-error" id="{}-error">{}</span>', field.auto_id, " ".join(str(e) for e in field.errors)
    )


@register.filter
def sent_value(field: BoundField) -> str:
    """What was sent for the field, as text ("" for nothing): the summary quotes it, since a number or date input
    cannot show a value that is not a number or a date."""
    value = field.data
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value)
    return "" if value is None else str(value)
