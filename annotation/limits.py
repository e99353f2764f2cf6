"""Bounds on untrusted JSON and uploads, shared by every API body, form, upload and importer that reads them.

- JSON: ``json_loads_bounded`` never lets a ``RecursionError`` out (a 100,000-deep ``[[[…]]]`` is a
  ``ValueError`` naming the problem) and refuses documents nested deeper than ``JSON_MAX_DEPTH`` (64 by
  default, env ``RLHF_JSON_MAX_DEPTH``), so nothing downstream recurses on them either.
- Uploads: ``upload_check_size`` refuses a file over ``MAX_UPLOAD_BYTES`` (env ``RLHF_MAX_UPLOAD_BYTES``)
  with ``UploadTooLarge`` (HTTP 413) before a byte of it is read; ``upload_lines`` streams a file line by line
  (each at most ``max_line_bytes``) so an upload is never held in memory whole.
"""
import json
from collections.abc import Iterator
from typing import IO

from django.conf import settings

from annotation.errors import InvalidInput


class JSONTooDeep(json.JSONDecodeError):
    """A JSON document nested deeper than allowed (or too deep for the parser itself)."""


class UploadTooLarge(InvalidInput):
    """An upload over ``MAX_UPLOAD_BYTES``: views answer 413 and read none of it."""

    status_code = 413


def json_max_depth() -> int:
    return int(getattr(settings, "JSON_MAX_DEPTH", 64))


def json_depth_check(value: object, *, max_depth: int | None = None) -> None:
    """JSONTooDeep when lists/objects nest deeper than ``max_depth``; iterative, so it cannot recurse."""
    limit = json_max_depth() if max_depth is None else max_depth
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            raise JSONTooDeep(f"JSON nested deeper than {limit} levels", "", 0)
        stack.extend((child, depth + 1) for child in children)


def json_loads_bounded(text: str | bytes | bytearray, *, max_depth: int | None = None, **loads_options) -> object:
    """``json.loads`` that raises JSONTooDeep (a ValueError) on nesting past ``max_depth``, never RecursionError."""
    limit = json_max_depth() if max_depth is None else max_depth
    try:
        value = json.loads(text, **loads_options)
    except RecursionError:
        raise JSONTooDeep(f"JSON nested deeper than {limit} levels", "", 0) from None
    json_depth_check(value, max_depth=limit)
    return value


def max_upload_bytes() -> int:
    return int(getattr(settings, "MAX_UPLOAD_BYTES", 64 * 1024 * 1024))


def upload_check_size(upload, *, location: str = "file") -> None:
    """UploadTooLarge when the uploaded file is over MAX_UPLOAD_BYTES (its size is known before reading)."""
    limit = max_upload_bytes()
    size = getattr(upload, "size", None)
    if size is not None and size > limit:
        raise UploadTooLarge(f"the file is {size} bytes; at most {limit} bytes (RLHF_MAX_UPLOAD_BYTES)",
                             location=location)


def upload_lines(upload: IO[bytes], *, max_line_bytes: int, location: str = "file") -> Iterator[bytes]:
    """The upload's lines (line ending kept), read one at a time from the start: never the whole file in
    memory. A line longer than ``max_line_bytes`` raises InvalidInput naming it, after at most that much
    of it was read."""
    upload_check_size(upload, location=location)
    upload.seek(0)
    number = 0
    while line := upload.readline(max_line_bytes + 1):
        number += 1
        if len(line) > max_line_bytes:
            raise InvalidInput(f"line is longer than {max_line_bytes} bytes", location=f"line {number}")
        yield line
