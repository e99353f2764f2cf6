"""``{% idempotency_field %}``: a hidden form field with a fresh key per rendered form (see training/idempotency.py).

A double click or a browser retry posts the same key twice, and the second post gets the first one's result.
"""
import uuid

from django import template
from django.utils.html import format_html

from training.idempotency import KEY_FIELD

register = template.Library()


@register.simple_tag
def idempotency_field() -> str:
    return format_html('<input type="hidden" name="{}" value="{}">', KEY_FIELD, uuid.uuid4().hex)
