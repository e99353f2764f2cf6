"""Idempotent writes: a repeated form submit or API call with the same client key returns the first result.

Browser forms carry a key drawn when the page is rendered (``{% idempotency_field %}`` of
``training/templatetags/idempotency.py``); API clients send an ``Idempotency-Key`` header (as in the IETF
draft "The Idempotency-Key HTTP Header Field"). ``idempotent_write`` inserts the key's row in the same
transaction as the write, under a unique constraint on (user, scope, key):

- a repeat after the first committed finds the row and gets the first result back (nothing is written);
- a concurrent repeat blocks on PostgreSQL's unique index until the first transaction ends, then does the
  same; if the first was rejected (its transaction rolled back, the row with it), the repeat writes itself;
- the same key with different arguments is refused with ``KeyReused`` (HTTP 422), never answered with the
  result of another request.

Without a key a write runs as before. Scopes name the write and its target ("round_start:project 3"), so a
client may reuse a key for different kinds of write.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping

from django.apps import apps
from django.core.files.uploadedfile import UploadedFile
from django.db import IntegrityError, models, transaction

from annotation.errors import InvalidInput
from training.models import IdempotencyKey

KEY_FIELD = "idempotency_key"  # the forms' hidden field
HEADER = "Idempotency-Key"
MAX_KEY_CHARS = 200


class KeyReused(InvalidInput):
    """The key was already used by this user for a different request; nothing was written."""


def key_from_request(request) -> str:
    """The client's key from the header or the form field ("" when none). Raises ``InvalidInput`` when malformed."""
    raw = request.headers.get(HEADER)
    location = HEADER
    if raw is None:
        raw, location = request.POST.get(KEY_FIELD, ""), KEY_FIELD
    key = raw.strip()
    if len(key) > MAX_KEY_CHARS or any(not "\x21" <= ch <= "\x7e" for ch in key):
        raise InvalidInput(f"give at most {MAX_KEY_CHARS} printable ASCII characters without spaces", location=location)
    return key


def arguments_digest(arguments: Mapping) -> str:
    """sha256 of the write's arguments: models by id, uploaded files by content, the rest as JSON."""
    return hashlib.sha256(json.dumps(_plain(arguments), sort_keys=True, default=str).encode()).hexdigest()


def _plain(value):
    if isinstance(value, models.Model):
        return [value._meta.label_lower, value.pk]
    if isinstance(value, UploadedFile):
        digest = hashlib.sha256()
        for chunk in value.chunks():  # chunks() rewinds first, and the caller reads the file again afterwards
            digest.update(chunk)
        value.seek(0)
        return ["file", digest.hexdigest()]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def idempotent_write(
    *, user, scope: str, key: str, arguments: Mapping, write: Callable[[], models.Model],
) -> tuple[models.Model, bool]:
    """``(result, replayed)``: ``write()`` once per (user, scope, key); a repeat returns the first result.

    ``write`` must return the model instance that answers the request (a run, an arena) and may raise
    ``InvalidInput``: then nothing is written, the key included, and the same key may be sent again.
    """
    if not key or user is None or not user.is_authenticated:
        return write(), False
    fingerprint = arguments_digest(arguments)
    with transaction.atomic():
        try:
            with transaction.atomic():  # a savepoint: a duplicate key leaves the outer transaction usable
                record = IdempotencyKey.objects.create(user=user, scope=scope[:100], key=key, fingerprint=fingerprint)
        except IntegrityError:
            return _first_result(user=user, scope=scope, key=key, fingerprint=fingerprint), True
        result = write()
        record.result_type, record.result_id = result._meta.label_lower, result.pk
        record.save(update_fields=["result_type", "result_id"])
    return result, False


def _first_result(*, user, scope: str, key: str, fingerprint: str) -> models.Model:
    record = IdempotencyKey.objects.get(user=user, scope=scope[:100], key=key)
    if record.fingerprint != fingerprint:
        raise KeyReused("this key was already used for a different request: send a new key (reload the form)",
                        location=HEADER)
    result = apps.get_model(record.result_type).objects.filter(pk=record.result_id).first()
    if result is None:
        raise InvalidInput("the request with this key was done, but its result has since been deleted",
                           location=HEADER)
    return result
