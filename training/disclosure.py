"""What of a run or a model a viewer may read: server paths and tracebacks are for admins only.

A run's error, log and config can hold absolute server paths (the artifact root, the virtualenv, a
base model's directory) and Python tracebacks. Admins (superusers) see them as stored; researchers see
them redacted: every traceback reduced to its last line (the exception and its message) and every
absolute path replaced by ``<server path>``. Labelers see nothing of training at all (the selectors
refuse them). Pure functions of text and JSON values, so the API and the pages redact the same way.

>>> text_redact('Boom.\\nTraceback (most recent call last):\\n'
...             '  File "/venv/x.py", line 3, in f\\n    g()\\nOSError: no /models/m')
'Boom.\\nOSError: no <server path>'
"""
import re

REDACTED_PATH = "<server path>"
# An absolute POSIX path (or ~/…) of two or more parts: a slash not preceded by a word character, a dot,
# a colon, "<" or another slash (so "1/2", "and/or", "</s>" and "http://host/x" are left alone).
_ABSOLUTE_PATH = re.compile(r"(?<![\w./:<~-])~?/[\w.@+~%=-]+(?:/[\w.@+~%=-]*)+")
_TRACEBACK_START = re.compile(r"^\s*Traceback \(most recent call last\):\s*$")
_CHAINED = ("During handling of the above exception", "The above exception was the direct cause")


def _drop_traceback_frames(text: str) -> str:
    """Keep what is not a traceback frame: a traceback collapses to its final 'Error: message' line."""
    kept: list[str] = []
    in_traceback = False
    for line in text.splitlines():
        if _TRACEBACK_START.match(line):
            in_traceback = True
            continue
        if in_traceback and (not line.strip() or line[:1].isspace() or line.lstrip().startswith("^")):
            continue  # a frame ('  File "…", line N'), its source line or a caret marker
        in_traceback = False
        if line.strip().startswith(_CHAINED):
            while kept and not kept[-1].strip():  # the blank line around "During handling of…"
                kept.pop()
            in_traceback = True  # what follows is blank lines, then the next traceback's header
            continue
        kept.append(line)
    return "\n".join(kept)


def text_redact(text: str) -> str:
    """The text without traceback frames and with every absolute path replaced by ``<server path>``."""
    if not text:
        return text
    return _ABSOLUTE_PATH.sub(REDACTED_PATH, _drop_traceback_frames(text))


def value_redact(value):
    """A JSON value (a run's config, a summary) with every absolute path in its strings redacted."""
    if isinstance(value, str):
        return _ABSOLUTE_PATH.sub(REDACTED_PATH, value)
    if isinstance(value, dict):
        return {key: value_redact(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [value_redact(item) for item in value]
    return value
