"""Import samples (and already-ranked hh-rlhf pairs) from JSONL as a new round of a project.

Line shapes (docs/formats.md documents them with examples): ``{"prompt", "responses"}``,
``{"messages", "responses"}`` (to be ranked by labelers: the round opens) and hh-rlhf ``{"chosen", "rejected"}``
(two dialogues sharing every turn but the final Assistant reply: stored as a prompt, two samples and a ranking
``[[chosen], [rejected]]`` with ``labeler=None, source="imported"``; the round is closed). Optional: ``id`` or
``external_id``, ``model``. An hh final reply may be empty (real data has a few), but the two must differ.

Two passes. Pass one validates every line with constant memory (line by line, strict UTF-8, at most
``IMPORT_MAX_LINE_BYTES`` a line) and collects up to ``MAX_PROBLEMS`` problems; any problem raises
``ImportRejected`` and nothing is written, not even the project. Pass two re-reads the stream and writes it in
one transaction with ``bulk_create`` in batches. Importing the same bytes into the project again writes
nothing and returns that round's counts (the file's sha256 is kept in ``Round.source``).
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import validate_slug
from django.db import IntegrityError, transaction
from django.db.models import Count, Q

from annotation.errors import ImportRejected, NotAllowed
from annotation.limits import json_loads_bounded
from annotation.models import Membership, PairwiseComparison, Project, Prompt, Ranking, RankingEntry, Round, Sample
from annotation.selectors import user_can_manage
from preferences.tiers import pairs_from_tiers

MAX_PROBLEMS = 20  # problems collected before giving up, so a user sees several at once
BATCH_LINES = 500  # lines per bulk_create batch in the write pass
ROLES = ("system", "user", "assistant")
MAX_NAME_CHARS = 200  # Prompt.external_id and Sample.model_name
_OPTIONAL_KEYS = {"id", "external_id", "model"}
_SHAPES = {  # shape name -> (required keys, allowed keys)
    "prompt": ({"prompt", "responses"}, {"prompt", "responses"} | _OPTIONAL_KEYS),
    "messages": ({"messages", "responses"}, {"messages", "responses"} | _OPTIONAL_KEYS),
    "pair": ({"chosen", "rejected"}, {"chosen", "rejected"} | _OPTIONAL_KEYS),
}
_HH_TURN = re.compile(r"(?:^|\n\n)(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


@dataclass(frozen=True)
class ImportResult:
    project_slug: str
    round_number: int
    created_project: bool
    prompts: int
    samples: int
    rankings: int
    pairs: int
    already_imported: bool = False  # the same bytes were imported before: nothing written, counts of that round


@dataclass(frozen=True)
class ParsedLine:
    """One validated line: the prompt's messages, its K responses and, for ranked pairs, tiers of indices."""

    messages: list[dict]
    responses: list[str]
    models: list[str]
    external_id: str
    tiers: list[list[int]] | None  # indices into responses, best first; None when labelers still rank it


class LineInvalid(ValueError):
    """A line-level problem; the scanner adds the line number."""


class ImportFileRejected(ImportRejected):
    """ImportRejected carrying every problem found, as (location, message) pairs, first line first."""

    def __init__(self, problems: list[tuple[str, str]], *, more: bool) -> None:
        self.problems = problems
        if len(problems) == 1 and not more:
            super().__init__(problems[0][1], location=problems[0][0])
        else:
            lines = [f"{location}: {message}" for location, message in problems]
            if more:
                lines.append(f"(stopped after {len(problems)} problems)")
            super().__init__("\n".join(lines))


# ---------------------------------------------------------------- validation of one line (pure)


def _text(value: object, *, where: str) -> str:
    """A string PostgreSQL can store: no NUL character, no unpaired surrogate (JSON "\\ud800" escapes)."""
    if not isinstance(value, str):
        raise LineInvalid(f"{where} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise LineInvalid(f"{where} is empty")
    if "\x00" in value:
        raise LineInvalid(f"{where} contains a NUL character")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise LineInvalid(f"{where} contains an unpaired surrogate escape (not valid Unicode)") from None
    return value


def _messages(value: object) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise LineInvalid('"messages" must be a non-empty list of {"role", "content"} objects')
    clean = []
    for i, message in enumerate(value):
        where = f"messages[{i}]"
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            raise LineInvalid(f'{where} must be an object with exactly the keys "role" and "content"')
        if message["role"] not in ROLES:
            raise LineInvalid(f"{where}.role must be one of {', '.join(ROLES)}, got {str(message['role'])[:40]!r}")
        clean.append({"role": message["role"], "content": _text(message["content"], where=f"{where}.content")})
    if clean[-1]["role"] != "user":
        raise LineInvalid("the conversation must end with a user turn (the responses answer it)")
    return clean


def _responses(value: object) -> list[str]:
    limit = settings.IMPORT_MAX_RESPONSES
    if not isinstance(value, list):
        raise LineInvalid('"responses" must be a list of strings')
    if not 2 <= len(value) <= limit:
        raise LineInvalid(f'"responses" must hold 2 to {limit} responses, got {len(value)}')
    texts = [_text(v, where=f"responses[{i}]") for i, v in enumerate(value)]
    _check_distinct(texts, names=[f"responses[{i}]" for i in range(len(texts))])
    return texts


def _check_distinct(texts: list[str], *, names: list[str]) -> None:
    first_seen: dict[str, int] = {}
    for i, text in enumerate(texts):
        if text in first_seen:
            raise LineInvalid(f"{names[i]} repeats {names[first_seen[text]]}: responses to a prompt must differ")
        first_seen[text] = i


def _name(value: object, *, where: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    name = _text(value, where=where)
    if len(name) > MAX_NAME_CHARS:
        raise LineInvalid(f"{where} is longer than {MAX_NAME_CHARS} characters")
    return name


def _models(record: dict, k: int) -> list[str]:
    value = record.get("model", "")
    if isinstance(value, list):
        if len(value) != k:
            raise LineInvalid(f'"model" lists {len(value)} names for {k} responses')
        return [_name(v, where=f"model[{i}]") for i, v in enumerate(value)]
    return [_name(value, where='"model"') if value != "" else ""] * k


def hh_dialogue_split(text: str, *, where: str) -> list[dict]:
    """"\\n\\nHuman: a\\n\\nAssistant: b" -> [{"role": "user", "content": "a"}, {"role": "assistant", ...}]."""
    parts = _HH_TURN.split(text)  # [before, role, content, role, content, ...]
    if parts[0].strip() or len(parts) < 3:
        raise LineInvalid(f'{where} must be a dialogue starting with "\\n\\nHuman:" (hh-rlhf format)')
    return [{"role": _HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _pair(record: dict) -> tuple[list[dict], list[str]]:
    chosen = hh_dialogue_split(_text(record["chosen"], where='"chosen"'), where='"chosen"')
    rejected = hh_dialogue_split(_text(record["rejected"], where='"rejected"'), where='"rejected"')
    for name, turns in (("chosen", chosen), ("rejected", rejected)):
        if turns[-1]["role"] != "assistant":
            raise LineInvalid(f'"{name}" must end with an Assistant reply')
    if chosen[:-1] != rejected[:-1]:
        turn = next((i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b), min(len(chosen), len(rejected)))
        raise LineInvalid(
            f'"chosen" and "rejected" must share every turn but the final Assistant reply; they differ at turn {turn + 1}'
        )
    try:
        messages = _messages(chosen[:-1])
    except LineInvalid as exc:
        raise LineInvalid(f"shared conversation: {exc}") from None
    replies = [chosen[-1]["content"], rejected[-1]["content"]]
    _check_distinct(replies, names=['the final reply of "chosen"', 'the final reply of "rejected"'])
    return messages, replies


def line_parse(record: object) -> ParsedLine:
    """Validate one decoded JSON value; raise LineInvalid naming the problem."""
    if not isinstance(record, dict):
        raise LineInvalid(f"each line must be a JSON object, got {type(record).__name__}")
    keys = set(record)
    shape = "pair" if keys & {"chosen", "rejected"} else "messages" if "messages" in keys else "prompt"
    required, allowed = _SHAPES[shape]
    if missing := sorted(required - keys):
        raise LineInvalid(f"missing field {', '.join(map(repr, missing))} (shape: {' + '.join(sorted(required))})")
    if unknown := sorted(keys - allowed):
        raise LineInvalid(f"unknown field {', '.join(map(repr, unknown))}; allowed here: {', '.join(sorted(allowed))}")
    if "id" in keys and "external_id" in keys:
        raise LineInvalid('give "id" or "external_id", not both')
    raw_id = record.get("id", record.get("external_id"))
    external_id = "" if raw_id is None else _name(raw_id, where='"id"')
    if shape == "pair":
        messages, responses = _pair(record)
        tiers = [[0], [1]]
    else:
        if shape == "prompt":
            messages = [{"role": "user", "content": _text(record["prompt"], where='"prompt"')}]
        else:
            messages = _messages(record["messages"])
        responses, tiers = _responses(record["responses"]), None
    return ParsedLine(messages, responses, _models(record, len(responses)), external_id, tiers)


# ---------------------------------------------------------------- reading the stream


def _raw_lines(stream: BinaryIO, digest) -> Iterator[tuple[int, bytes | None]]:
    """(line number, bytes without the newline) per line; None for a line over the size limit (skipped)."""
    limit = settings.IMPORT_MAX_LINE_BYTES
    line_no = 0
    while chunk := stream.readline(limit + 1):
        line_no += 1
        digest.update(chunk)
        if len(chunk) > limit and not chunk.endswith(b"\n"):
            while chunk and not chunk.endswith(b"\n"):  # drain the rest of the line, 64 KiB at a time
                chunk = stream.readline(65536)
                digest.update(chunk)
            yield line_no, None
            continue
        yield line_no, chunk.rstrip(b"\r\n")


def _records(stream: BinaryIO, digest) -> Iterator[tuple[int, ParsedLine | None, str | None]]:
    """(line number, parsed line, problem) for every non-blank line; exactly one of the last two is None."""
    for line_no, raw in _raw_lines(stream, digest):
        if raw is None:
            yield line_no, None, f"line is longer than {settings.IMPORT_MAX_LINE_BYTES} bytes"
            continue
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield line_no, None, f"not valid UTF-8 (byte {exc.start + 1} of the line); save the file as UTF-8"
            continue
        if line_no == 1:
            text = text.removeprefix("\ufeff")  # a byte-order mark some editors write
        if not text.strip():
            continue
        try:
            yield line_no, line_parse(json_loads_bounded(text)), None
        except json.JSONDecodeError as exc:
            yield line_no, None, f"invalid JSON: {exc.msg} at column {exc.colno}"
        except RecursionError:
            yield line_no, None, "invalid JSON: nested too deeply"
        except LineInvalid as exc:
            yield line_no, None, str(exc)


@dataclass(frozen=True)
class _Scan:
    k: int
    ranked: bool
    sha256: str


def _file_problem(line: ParsedLine, first: tuple[int, int, bool], project: Project | None) -> str | None:
    """What is wrong with a valid line in this file: K differs from the first line or the project, or shapes mix."""
    first_line, k, ranked = first
    if len(line.responses) != k:
        return f"has {len(line.responses)} responses but line {first_line} has {k}; every line needs the same K"
    if project is not None and project.k != k:
        return f"project {project.slug!r} has K={project.k} responses per prompt; this line has {k}"
    if (line.tiers is not None) != ranked:
        return f"mixes ranked chosen/rejected pairs and unranked responses (see line {first_line}); use two files"
    return None


def _scan(stream: BinaryIO, *, project: Project | None) -> _Scan:
    """Pass one: validate the whole file; raise ImportFileRejected with up to MAX_PROBLEMS problems."""
    problems: list[tuple[str, str]] = []
    digest = hashlib.sha256()
    first: tuple[int, int, bool] | None = None  # (line number, K, ranked) of the first valid line
    for line_no, line, problem in _records(stream, digest):
        if line is not None:
            first = first or (line_no, len(line.responses), line.tiers is not None)
            project_checked = project if line_no == first[0] else None  # report a K mismatch once
            problem = _file_problem(line, first, project_checked)
        if problem is not None:
            if len(problems) == MAX_PROBLEMS:
                raise ImportFileRejected(problems, more=True)
            problems.append((f"line {line_no}", problem))
    if first is None and not problems:
        problems.append(("line 1", "the file holds no records (it is empty)"))
    if problems:
        raise ImportFileRejected(problems, more=False)
    return _Scan(k=first[1], ranked=first[2], sha256=digest.hexdigest())


# ---------------------------------------------------------------- writing


def _write_batch(batch: list[ParsedLine], *, project: Project, rnd: Round) -> tuple[int, int, int, int]:
    """bulk_create the prompts, samples and, for ranked lines, rankings, entries and pairs; return the four counts."""
    prompts = Prompt.objects.bulk_create(
        [Prompt(project=project, round=rnd, messages=line.messages, external_id=line.external_id) for line in batch]
    )
    samples = Sample.objects.bulk_create(
        [
            Sample(prompt=prompt, text=text, text_sha256=hashlib.sha256(text.encode()).hexdigest(), position=i,
                   model_name=line.models[i])
            for prompt, line in zip(prompts, batch) for i, text in enumerate(line.responses)
        ]
    )
    if batch[0].tiers is None:
        return len(prompts), len(samples), 0, 0
    rankings = Ranking.objects.bulk_create(
        [Ranking(prompt=prompt, labeler=None, source=Ranking.Source.IMPORTED) for prompt in prompts]
    )
    entries, pairs, offset = [], [], 0
    for ranking, line in zip(rankings, batch):
        ids = [samples[offset + i].pk for i in range(len(line.responses))]
        offset += len(line.responses)
        for tier_index, tier in enumerate(line.tiers):
            entries += [RankingEntry(ranking=ranking, sample_id=ids[i], tier=tier_index, shown_position=i)
                        for i in tier]
        for chosen, rejected, margin in pairs_from_tiers([[ids[i] for i in tier] for tier in line.tiers]):
            pairs.append(PairwiseComparison(ranking=ranking, prompt_id=ranking.prompt_id, chosen_id=chosen,
                                            rejected_id=rejected, margin=margin))
    RankingEntry.objects.bulk_create(entries)
    PairwiseComparison.objects.bulk_create(pairs)
    return len(prompts), len(samples), len(rankings), len(pairs)


def _project_locked(slug: str, *, k: int, user) -> tuple[Project, bool]:
    """The project row locked for this transaction (serialises round numbering), created if missing."""
    created = False
    if not Project.objects.filter(slug=slug).exists():
        try:
            with transaction.atomic():  # a savepoint: a concurrent import may create it first
                project = Project.objects.create(slug=slug, name=slug.replace("-", " ").replace("_", " ").title(),
                                                 k=k, created_by=user)
                if user is not None:
                    Membership.objects.create(project=project, user=user, role=Membership.Role.RESEARCHER)
                created = True
        except IntegrityError:
            pass
    project = Project.objects.select_for_update().get(slug=slug)
    if not created and user is not None and not user_can_manage(user=user, project=project):
        raise NotAllowed("Only researchers of this project and admins may import into it.")
    if project.k != k:
        raise ImportRejected(f"project {slug!r} has K={project.k} responses per prompt; the file has {k}",
                             location="line 1")
    return project, created


def _write_all(stream: BinaryIO, *, project: Project, rnd: Round) -> tuple[int, ...]:
    """Pass two: re-read the validated stream and write it in batches; (prompts, samples, rankings, pairs)."""
    totals, batch = (0, 0, 0, 0), []
    for line_no, line, problem in _records(stream, hashlib.sha256()):
        if line is None:  # the stream changed between the two passes
            raise ImportRejected(problem, location=f"line {line_no}")
        batch.append(line)
        if len(batch) == BATCH_LINES:
            totals, batch = tuple(map(sum, zip(totals, _write_batch(batch, project=project, rnd=rnd)))), []
    if batch:
        totals = tuple(map(sum, zip(totals, _write_batch(batch, project=project, rnd=rnd))))
    return totals


def _round_result(rnd: Round, *, created_project: bool, already: bool) -> ImportResult:
    counts = Prompt.objects.filter(round=rnd).aggregate(
        prompts=Count("id", distinct=True), samples=Count("samples", distinct=True),
        rankings=Count("rankings", distinct=True, filter=Q(rankings__source=Ranking.Source.IMPORTED)),
    )
    pairs = PairwiseComparison.objects.filter(prompt__round=rnd, ranking__source=Ranking.Source.IMPORTED).count()
    return ImportResult(project_slug=rnd.project.slug, round_number=rnd.number, created_project=created_project,
                        prompts=counts["prompts"], samples=counts["samples"], rankings=counts["rankings"],
                        pairs=pairs, already_imported=already)


def _seekable(stream: BinaryIO) -> BinaryIO:
    """The stream itself if it can be re-read, else a spooled copy (in memory up to 8 MiB, then on disk)."""
    if getattr(stream, "seekable", lambda: False)():
        return stream
    spool = tempfile.SpooledTemporaryFile(max_size=8 * 1024 * 1024)
    shutil.copyfileobj(stream, spool, 1024 * 1024)
    spool.seek(0)
    return spool


def import_samples_from_file(
    *, project_slug: str, stream: BinaryIO, user=None, source_name: str = "", round_number: int | None = None
) -> ImportResult:
    """Validate the whole JSONL ``stream``, then write it as a new round of the project (created if missing)."""
    try:
        validate_slug(project_slug)
    except ValidationError:
        raise ImportRejected(f"{project_slug[:80]!r} is not a valid project slug (letters, digits, - and _)",
                             location="project") from None
    if round_number is not None and round_number < 1:
        raise ImportRejected("the round number must be 1 or more", location="round")
    stream = _seekable(stream)
    start = stream.tell()
    project = Project.objects.filter(slug=project_slug).first()
    if project is not None and user is not None and not user_can_manage(user=user, project=project):
        raise NotAllowed("Only researchers of this project and admins may import into it.")  # before reading
    scan = _scan(stream, project=project)
    source = f"{source_name[:120]} sha256:{scan.sha256}".strip()
    stream.seek(start)
    with transaction.atomic():
        project, created = _project_locked(project_slug, k=scan.k, user=user)
        earlier = project.rounds.filter(source__endswith=f"sha256:{scan.sha256}").first()
        if earlier is not None:
            return _round_result(earlier, created_project=False, already=True)
        number = round_number or (max(project.rounds.values_list("number", flat=True), default=0) + 1)
        if project.rounds.filter(number=number).exists():
            raise ImportRejected(f"project {project.slug!r} already has a round {number}; leave the round out to "
                                 f"create the next one", location="round")
        status = Round.Status.CLOSED if scan.ranked else Round.Status.OPEN
        rnd = Round.objects.create(project=project, number=number, status=status, source=source)
        prompts, samples, rankings, pairs = _write_all(stream, project=project, rnd=rnd)
    return ImportResult(project_slug=project.slug, round_number=number, created_project=created, prompts=prompts,
                        samples=samples, rankings=rankings, pairs=pairs)
