"""Export a project's preferences as JSONL or Parquet, streamed with constant memory.

Formats (docs/formats.md has examples of each):

- ``pairs``: TRL's standard preference format, one row per PairwiseComparison: ``prompt``, ``chosen`` and
  ``rejected`` are strings. The conversation is rendered as plain text the way hh-rlhf does it,
  ``"\\n\\nHuman: ...\\n\\nAssistant: ...\\n\\nHuman: ...\\n\\nAssistant:"`` (a system message as
  ``"\\n\\nSystem: ..."``), and each reply starts with a space, so ``prompt + chosen`` reads as one dialogue.
- ``conversational``: TRL's conversational preference format: ``prompt`` is the list of ``{role, content}``
  messages, ``chosen`` and ``rejected`` are lists with one assistant message.
- ``rankings``: lossless, one row per Ranking: tiers of ``{sample_id, text, model}`` best first, per-sample
  flags, time spent, the order the responses were shown in, labeler and source, the labeler's comment and
  ``all_bad`` (the labeler marked every response bad; its pairs are still the order given).

Both pair formats also carry ``tier_distance``, ``weight``, ``labeler``, ``source``, ``round``,
``prompt_id``, ``ranking_id``, ``chosen_id`` and ``rejected_id``.

Why ``tier_distance`` and not ``margin``: TRL 1.16's RewardTrainer, when a column named ``margin`` is
present, trains on ``-logsigmoid(r_chosen - r_rejected - margin)`` (reward_trainer.py, compute_loss), i.e.
it demands a reward gap of at least ``margin`` logits. Our margin is a tier distance (1 .. K-1): it says
how many tiers apart two responses were put, not how much better one is on any calibrated scale, and its
range grows with K. Feeding it as a margin would change the objective silently, so the column is named
``tier_distance`` and TRL ignores it. To opt in, rename (and scale) it yourself:
``dataset.rename_column("tier_distance", "margin")``.

Sources: every export takes a ``SourceSelection`` (``annotation/provenance.py``); the default is human only
(human, simulated, imported and gold-prompt rankings). AI-labeler rankings and arena votes are included only
when asked for; under "weighted" an AI pair's ``weight`` is its stored weight × ``ai_weight``. The choice is
in every row's ``source``, in Parquet's schema metadata (key ``rlhf_studio.sources``) and in the
``X-Export-Sources`` header of the HTTP downloads.

Rows are read with ``QuerySet.iterator(chunk_size=...)`` (a server-side cursor on PostgreSQL) and encoded in
batches; a pair chunk's prompt and sample texts are read once per chunk, not joined to every pair. JSONL is yielded as it is
produced; Parquet is written in row groups to a spooled temporary file (a Parquet footer comes last), then
yielded in 1 MiB chunks.
"""
from __future__ import annotations

import json
import tempfile
from collections.abc import Iterable, Iterator
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from django.contrib.auth import get_user_model
from django.db import connection, models, transaction
from django.db.models import Exists, OuterRef

from annotation.errors import InvalidInput
from annotation.models import (
    PairwiseComparison, Project, Prompt, Ranking, RankingEntry, RankingExclusion, Sample,
)
from annotation.provenance import HUMAN_ONLY, SourceSelection

Format = Literal["pairs", "conversational", "rankings"]
FileFormat = Literal["jsonl", "parquet"]
FORMATS: tuple[str, ...] = ("pairs", "conversational", "rankings")
FILE_FORMATS: tuple[str, ...] = ("jsonl", "parquet")
CHUNK_ROWS = 1000  # rows per database chunk and per Parquet row group
EXPORT_CHUNK_PAIRS = 10_000  # pairs per server-side cursor fetch; their prompts and samples are read once
YIELD_BYTES = 1 << 20  # JSONL is yielded in pieces of about this size; Parquet in pieces of exactly this size
HH_ROLE_NAMES = {"user": "Human", "assistant": "Assistant", "system": "System"}

_MESSAGE = pa.struct([("role", pa.string()), ("content", pa.string())])
_PAIR_META = [
    ("tier_distance", pa.int32()), ("weight", pa.float64()), ("labeler", pa.string()), ("source", pa.string()),
    ("round", pa.int32()), ("prompt_id", pa.int64()), ("ranking_id", pa.int64()), ("chosen_id", pa.int64()),
    ("rejected_id", pa.int64()),
]
_TIER_SAMPLE = pa.struct([("sample_id", pa.int64()), ("text", pa.string()), ("model", pa.string())])
SCHEMAS = {
    "pairs": pa.schema([("prompt", pa.string()), ("chosen", pa.string()), ("rejected", pa.string()), *_PAIR_META]),
    "conversational": pa.schema(
        [("prompt", pa.list_(_MESSAGE)), ("chosen", pa.list_(_MESSAGE)), ("rejected", pa.list_(_MESSAGE)), *_PAIR_META]
    ),
    "rankings": pa.schema([
        ("ranking_id", pa.int64()), ("prompt_id", pa.int64()), ("external_id", pa.string()), ("round", pa.int32()),
        ("messages", pa.list_(_MESSAGE)), ("tiers", pa.list_(pa.list_(_TIER_SAMPLE))),
        ("flags", pa.list_(pa.struct([("sample_id", pa.int64()), ("flags", pa.list_(pa.string()))]))),
        ("shown_order", pa.list_(pa.int64())), ("time_spent_ms", pa.int64()), ("labeler", pa.string()),
        ("source", pa.string()), ("created_at", pa.string()), ("comment", pa.string()), ("all_bad", pa.bool_()),
    ]),
}


def render_plain_prompt(messages: list[dict]) -> str:
    """A conversation as hh-rlhf plain text, ending with the cue for the next reply.

    >>> render_plain_prompt([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
    ...                      {"role": "user", "content": "Bye"}])
    '\\n\\nHuman: Hi\\n\\nAssistant: Hello\\n\\nHuman: Bye\\n\\nAssistant:'
    """
    turns = "".join(f"\n\n{HH_ROLE_NAMES.get(m['role'], m['role'].title())}: {m['content']}" for m in messages)
    return turns + "\n\nAssistant:"


def _username_field(prefix: str) -> str:
    return f"{prefix}labeler__{get_user_model().USERNAME_FIELD}"


def _pair_rows(project: Project, round_number: int | None, *, conversational: bool, selection: SourceSelection,
               as_jsonl: bool = False) -> Iterator[dict | str]:
    """One row per pair, in id order (``as_jsonl``: as a finished JSONL line). The pairs are read as plain
    tuples through a server-side cursor without their texts; each chunk's prompts and samples are then read
    once (a prompt's C(K,2) × overlap pairs share its text) and rendered and JSON-encoded once per chunk.
    Memory is one chunk, whatever the number of pairs."""
    # Excluded in review: left out. NOT EXISTS, not a LEFT JOIN … IS NULL: PostgreSQL estimates the latter at
    # 0.5% of the pairs when the exclusion table is empty, then sorts all 10M pairs before the first row
    # (95 s at 1M prompts); with the anti-join it walks the primary key and streams at once.
    excluded = RankingExclusion.objects.filter(ranking=OuterRef("ranking_id"))
    pairs = PairwiseComparison.objects.filter(~Exists(excluded), prompt__project=project,
                                              ranking__source__in=selection.sources)
    if round_number is not None:
        pairs = pairs.filter(prompt__round__number=round_number)
    pairs = pairs.order_by("id").values_list(
        "margin", "weight", _username_field("ranking__"), "ranking__source", "prompt__round__number", "prompt_id",
        "ranking_id", "chosen_id", "rejected_id",
    )
    chunk: list[tuple] = []
    for pair in pairs.iterator(chunk_size=EXPORT_CHUNK_PAIRS):
        chunk.append(pair)
        if len(chunk) == EXPORT_CHUNK_PAIRS:
            yield from _pair_chunk(chunk, conversational=conversational, selection=selection, as_jsonl=as_jsonl)
            chunk = []
    yield from _pair_chunk(chunk, conversational=conversational, selection=selection, as_jsonl=as_jsonl)


def _texts_by_id(model, column: str, ids: set[int]) -> dict[int, object]:
    """{id: column} for these rows: one ``= ANY(array)`` on PostgreSQL (an IN list of thousands of
    placeholders costs more to build than to run), ``IN`` elsewhere."""
    if connection.vendor != "postgresql":
        return dict(model.objects.filter(pk__in=ids).values_list("id", column))
    field = model._meta.get_field(column)
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT id, {connection.ops.quote_name(field.column)} FROM "
                       f"{connection.ops.quote_name(model._meta.db_table)} WHERE id = ANY(%s)", [list(ids)])
        rows = cursor.fetchall()
    if isinstance(field, models.JSONField):
        return {i: v if not isinstance(v, str) else json.loads(v) for i, v in rows}
    return dict(rows)


def _pair_chunk(chunk: list[tuple], *, conversational: bool, selection: SourceSelection,
                as_jsonl: bool) -> Iterator[dict | str]:
    if not chunk:
        return
    messages = _texts_by_id(Prompt, "messages", {p[5] for p in chunk})
    texts = _texts_by_id(Sample, "text", {p[i] for p in chunk for i in (7, 8)})
    if conversational:
        prompts = messages
        replies = {i: [{"role": "assistant", "content": t}] for i, t in texts.items()}
    else:
        prompts = {i: render_plain_prompt(m) for i, m in messages.items()}
        replies = {i: " " + t for i, t in texts.items()}
    factors = {source: selection.weight_factor(source) for source in {p[3] for p in chunk}}
    if as_jsonl:
        yield from _pair_lines(chunk, prompts=prompts, replies=replies, factors=factors)
        return
    for margin, weight, labeler, source, round_number, prompt_id, ranking_id, chosen_id, rejected_id in chunk:
        yield {
            "prompt": prompts[prompt_id], "chosen": replies[chosen_id], "rejected": replies[rejected_id],
            "tier_distance": margin, "weight": weight * factors[source], "labeler": labeler, "source": source,
            "round": round_number, "prompt_id": prompt_id, "ranking_id": ranking_id, "chosen_id": chosen_id,
            "rejected_id": rejected_id,
        }


def _pair_lines(chunk: list[tuple], *, prompts: dict, replies: dict, factors: dict) -> Iterator[str]:
    """The JSONL lines of a chunk, byte for byte what ``json.dumps(row, ensure_ascii=False)`` writes for the row
    dict above; each text is encoded once per chunk rather than once per pair."""
    def enc(value) -> str:
        return json.dumps(value, ensure_ascii=False)

    prompts = {i: enc(v) for i, v in prompts.items()}
    replies = {i: enc(v) for i, v in replies.items()}
    names = {name: enc(name) for name in {p[2] for p in chunk}}  # few distinct values in a chunk
    sources = {source: enc(source) for source in factors}
    weights = {(w, source): enc(w * factors[source]) for w, source in {(p[1], p[3]) for p in chunk}}
    rounds = {number: enc(number) for number in {p[4] for p in chunk}}
    for margin, weight, labeler, source, round_number, prompt_id, ranking_id, chosen_id, rejected_id in chunk:
        yield (f'{{"prompt": {prompts[prompt_id]}, "chosen": {replies[chosen_id]}, "rejected": '
               f'{replies[rejected_id]}, "tier_distance": {margin}, "weight": {weights[weight, source]}, '
               f'"labeler": {names[labeler]}, "source": {sources[source]}, "round": {rounds[round_number]}, '
               f'"prompt_id": {prompt_id}, "ranking_id": {ranking_id}, "chosen_id": {chosen_id}, '
               f'"rejected_id": {rejected_id}}}\n')


def _ranking_rows(project: Project, round_number: int | None, *, selection: SourceSelection) -> Iterator[dict]:
    """One row per ranking; rankings are read in chunks, and each chunk's entries with one more query."""
    rankings = Ranking.objects.filter(prompt__project=project, exclusion__isnull=True,  # excluded in review: left out
                                      source__in=selection.sources)
    if round_number is not None:
        rankings = rankings.filter(prompt__round__number=round_number)
    labeler = _username_field("")
    rankings = rankings.order_by("id").values(
        "id", "prompt_id", "prompt__external_id", "prompt__round__number", "prompt__messages", "time_spent_ms",
        labeler, "source", "created_at", "comment", "all_bad",
    )
    chunk: list[dict] = []
    for ranking in rankings.iterator(chunk_size=CHUNK_ROWS):
        chunk.append(ranking)
        if len(chunk) == CHUNK_ROWS:
            yield from _ranking_chunk(chunk, labeler=labeler)
            chunk = []
    yield from _ranking_chunk(chunk, labeler=labeler)


def _ranking_chunk(chunk: list[dict], *, labeler: str) -> Iterator[dict]:
    entries: dict[int, list[dict]] = {r["id"]: [] for r in chunk}
    rows = RankingEntry.objects.filter(ranking_id__in=list(entries)).order_by("ranking_id", "tier", "shown_position")
    for e in rows.values("ranking_id", "sample_id", "tier", "shown_position", "flags", "sample__text",
                         "sample__model_name"):
        entries[e["ranking_id"]].append(e)
    for ranking in chunk:
        own = entries[ranking["id"]]
        tiers: dict[int, list[dict]] = {}
        for e in own:  # already sorted by tier, then shown position
            tiers.setdefault(e["tier"], []).append(
                {"sample_id": e["sample_id"], "text": e["sample__text"], "model": e["sample__model_name"]})
        yield {
            "ranking_id": ranking["id"], "prompt_id": ranking["prompt_id"], "external_id": ranking["prompt__external_id"],
            "round": ranking["prompt__round__number"], "messages": ranking["prompt__messages"],
            "tiers": [tiers[t] for t in sorted(tiers)],
            "flags": [{"sample_id": e["sample_id"], "flags": list(e["flags"])} for e in own if e["flags"]],
            "shown_order": [e["sample_id"] for e in sorted(own, key=lambda e: e["shown_position"])],
            "time_spent_ms": ranking["time_spent_ms"], "labeler": ranking[labeler], "source": ranking["source"],
            "created_at": ranking["created_at"].isoformat(), "comment": ranking["comment"],
            "all_bad": ranking["all_bad"],
        }


def _jsonl(rows: Iterable[dict | str]) -> Iterator[bytes]:
    buffer: list[bytes] = []
    size = 0
    for row in rows:
        line = (row if isinstance(row, str) else json.dumps(row, ensure_ascii=False) + "\n").encode()
        buffer.append(line)
        size += len(line)
        if size >= YIELD_BYTES:
            yield b"".join(buffer)
            buffer, size = [], 0
    if buffer:
        yield b"".join(buffer)


def _parquet(rows: Iterable[dict], schema: pa.Schema) -> Iterator[bytes]:
    """Row groups of CHUNK_ROWS rows into a spooled file (memory up to 16 MiB, then disk), then its bytes."""
    with tempfile.SpooledTemporaryFile(max_size=16 << 20) as spool:
        with pq.ParquetWriter(spool, schema) as writer:
            batch: list[dict] = []
            for row in rows:
                batch.append(row)
                if len(batch) == CHUNK_ROWS:
                    writer.write_table(pa.Table.from_pylist(batch, schema=schema))
                    batch = []
            if batch:  # with no rows at all, closing still writes a valid file with the schema
                writer.write_table(pa.Table.from_pylist(batch, schema=schema))
        spool.seek(0)
        while chunk := spool.read(YIELD_BYTES):
            yield chunk


def _in_one_transaction(rows: Iterable) -> Iterator:
    """Read inside a transaction: one snapshot for the whole export, and on PostgreSQL a plain server-side
    cursor. Outside one (autocommit), Django declares the cursor WITH HOLD, which PostgreSQL materialises
    whole at the implicit commit: the first row came after the entire query (59 s for 10M pairs)."""
    with transaction.atomic():
        yield from rows


def export_preferences(
    *, project: Project, fmt: Format, file_format: FileFormat, round_number: int | None = None,
    selection: SourceSelection = HUMAN_ONLY,
) -> Iterator[bytes]:
    """The project's preferences in ``fmt`` as ``file_format`` bytes, lazily; checks its arguments first.

    ``selection``: which ranking sources (default: human only); see ``annotation/provenance.py``."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown format {str(fmt)[:40]!r}; choose one of {', '.join(FORMATS)}", location="format")
    if file_format not in FILE_FORMATS:
        raise InvalidInput(
            f"unknown file format {str(file_format)[:40]!r}; choose one of {', '.join(FILE_FORMATS)}",
            location="file_format",
        )
    if round_number is not None and not project.rounds.filter(number=round_number).exists():
        raise InvalidInput(f"project {project.slug!r} has no round {round_number}", location="round")
    if fmt == "rankings":
        rows = _ranking_rows(project, round_number, selection=selection)
    else:
        rows = _pair_rows(project, round_number, conversational=fmt == "conversational", selection=selection,
                          as_jsonl=file_format == "jsonl")
    rows = _in_one_transaction(rows)
    if file_format == "jsonl":
        return _jsonl(rows)
    schema = SCHEMAS[fmt].with_metadata({b"rlhf_studio.sources": json.dumps(selection.describe()).encode()})
    return _parquet(rows, schema)


def export_sources_header(selection: SourceSelection) -> str:
    """The ``X-Export-Sources`` header value: the selection's one-line description (ASCII only)."""
    return selection.label().replace("×", "x")


def export_filename(*, project: Project, fmt: Format, file_format: FileFormat, round_number: int | None = None) -> str:
    """A download name such as ``demo-pairs-round2.parquet``."""
    suffix = f"-round{round_number}" if round_number is not None else ""
    return f"{project.slug}-{fmt}{suffix}.{file_format}"
