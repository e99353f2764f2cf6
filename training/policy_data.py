"""The policy side's own data: SFT demonstrations and the prompt pool of a project.

One JSONL import for both (docs/loop.md shows examples). A line is either

* a demonstration ``{"prompt": str | "messages": [{role, content}, ...], "response": str}`` — stored as a
  ``Demonstration`` for SFT, and its prompt also joins the pool; or
* a pool prompt ``{"prompt": str}`` / ``{"messages": [...]}`` — stored as a ``PoolPrompt``: "start next
  round" and PPO/GRPO runs sample their prompts from the pool.

Every line is validated before anything is written (problems name the line and the field); the write is
one transaction; importing the same lines again writes nothing (rows are unique per content sha256).
"""
from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable

from django.db import transaction

from annotation.errors import InvalidInput
from annotation.limits import json_loads_bounded
from annotation.models import Project
from training.models import Demonstration, PoolPrompt

ROLES = ("system", "user", "assistant")
MAX_TEXT_CHARS = 20_000
MAX_LINES = 100_000
MAX_PROBLEMS = 10


def messages_parse(record: dict, *, where: str) -> list[dict]:
    """The prompt of a record as chat messages; InvalidInput naming ``where`` when it is malformed."""
    if ("prompt" in record) == ("messages" in record):
        raise InvalidInput("give exactly one of 'prompt' (a string) or 'messages' (a list)", location=where)
    if "prompt" in record:
        return [{"role": "user", "content": _text(record["prompt"], where=f"{where}.prompt")}]
    messages = record["messages"]
    if not isinstance(messages, list) or not messages:
        raise InvalidInput("'messages' must be a non-empty list of {role, content}", location=f"{where}.messages")
    out = []
    for i, message in enumerate(messages):
        at = f"{where}.messages[{i}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise InvalidInput("each message must be an object with exactly 'role' and 'content'", location=at)
        if message["role"] not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}, got {str(message['role'])[:40]!r}",
                               location=f"{at}.role")
        out.append({"role": message["role"], "content": _text(message["content"], where=f"{at}.content")})
    return out


def _text(value: object, *, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInput("must be a non-empty string", location=where)
    if len(value) > MAX_TEXT_CHARS or "\x00" in value:
        raise InvalidInput(f"must be at most {MAX_TEXT_CHARS} characters without NUL bytes", location=where)
    return value


def _sha(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


def policy_lines_parse(lines: Iterable[bytes | str]) -> list[tuple[list[dict], str | None]]:
    """(messages, response or None) per non-empty line; InvalidInput listing the first problems otherwise."""
    parsed, problems = [], []
    for number, raw in enumerate(lines, start=1):
        if number > MAX_LINES:
            raise InvalidInput(f"at most {MAX_LINES} lines per import", location=f"line {number}")
        try:
            text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            if not text.strip():
                continue
            record = json_loads_bounded(text)
            if not isinstance(record, dict):
                raise InvalidInput("each line must be a JSON object", location=f"line {number}")
            unknown = sorted(set(record) - {"prompt", "messages", "response", "id"})
            if unknown:
                raise InvalidInput(f"unknown key {unknown[0]!r} (allowed: prompt|messages, response, id)",
                                   location=f"line {number}")
            messages = messages_parse(record, where=f"line {number}")
            response = _text(record["response"], where=f"line {number}.response") if "response" in record else None
            parsed.append((messages, response))
        except UnicodeDecodeError:
            problems.append(f"line {number}: not UTF-8")
        except ValueError as error:
            problems.append(f"line {number}: {error}" if not isinstance(error, InvalidInput) else
                            f"{error.location}: {error.message}")
        if len(problems) >= MAX_PROBLEMS:
            break
    if problems:
        raise InvalidInput("; ".join(problems), location=problems[0].split(":")[0])
    if not parsed:
        raise InvalidInput("the file holds no prompts", location="file")
    return parsed


def policy_data_import(*, project: Project, lines: Iterable[bytes | str], source: str = "") -> dict:
    """Validate then store demonstrations and pool prompts; returns counts of what was new."""
    parsed = policy_lines_parse(lines)
    with transaction.atomic():
        demos = [Demonstration(project=project, messages=m, response=r, content_sha256=_sha(m, r), source=source[:200])
                 for m, r in parsed if r is not None]
        pool = {_sha(m): PoolPrompt(project=project, messages=m, content_sha256=_sha(m), source=source[:200])
                for m, _ in parsed}
        before = (project.demonstrations.count(), project.pool_prompts.count())
        Demonstration.objects.bulk_create(demos, ignore_conflicts=True, batch_size=1000)
        PoolPrompt.objects.bulk_create(list(pool.values()), ignore_conflicts=True, batch_size=1000)
        after = (project.demonstrations.count(), project.pool_prompts.count())
    return {"lines": len(parsed), "demonstrations": after[0] - before[0], "pool_prompts": after[1] - before[1]}


def pool_prompts_sample(*, project: Project, n: int, seed: int) -> list[list[dict]]:
    """``n`` prompts from the pool: without replacement while the pool lasts, with replacement beyond."""
    if n < 1:
        raise InvalidInput("sample at least one prompt", location="sample")
    pool = list(project.pool_prompts.order_by("id").values_list("messages", flat=True))
    if not pool:
        raise InvalidInput(f"project {project.slug} has no prompt pool: import prompts first", location="sample")
    rng = random.Random(seed)
    picks = rng.sample(range(len(pool)), n) if n <= len(pool) else [rng.randrange(len(pool)) for _ in range(n)]
    return [pool[i] for i in picks]


def pool_prompts_all(*, project: Project) -> list[list[dict]]:
    """Every pool prompt, or (with an empty pool) the prompts of the project's rounds, deduplicated."""
    pool = list(project.pool_prompts.order_by("id").values_list("messages", flat=True))
    if pool:
        return pool
    seen, out = set(), []
    for messages in project.prompts.order_by("id").values_list("messages", flat=True):
        key = _sha(messages)
        if key not in seen:
            seen.add(key)
            out.append(messages)
    return out


def demonstrations_all(*, project: Project) -> list[tuple[list[dict], str]]:
    return [(m, r) for m, r in project.demonstrations.order_by("id").values_list("messages", "response")]


def demo_policy_data_seed(*, project: Project) -> dict:
    """The demo task's prompt pool and SFT demonstrations (``training/ml/demo_data``), imported idempotently."""
    from pathlib import Path

    data_dir = Path(__file__).resolve().parent / "ml" / "demo_data"
    counts = {"demonstrations": 0, "pool_prompts": 0}
    for name in ("prompts.jsonl", "demonstrations.jsonl"):
        with open(data_dir / name, "rb") as f:
            result = policy_data_import(project=project, lines=f, source=f"demo_data/{name}")
        counts = {key: counts[key] + result[key] for key in counts}
    return counts
