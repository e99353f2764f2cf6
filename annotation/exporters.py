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

Rows are read with ``QuerySet.iterator(chunk_size=...)`` (a server-side cursor on PostgreSQL, one transaction) and
encoded in batches; a pair chunk's prompt and sample texts are read once per chunk, not joined to every pair. On
PostgreSQL the reading runs a couple of chunks ahead of the encoding in a thread with its own connection
(``_read_ahead``), so the database and the encoding use a core each. JSONL is yielded as it is produced; Parquet is written in row groups to a spooled temporary file (a Parquet footer comes last), then
yielded in 1 MiB chunks.
"""
from __future__ import annotations

import json
import math
import queue
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator
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
READ_AHEAD_CHUNKS = 2  # chunks the database side may read ahead of the encoding (memory: this many chunks more)
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


def _pair_chunks(project: Project, round_number: int | None, *, selection: SourceSelection) -> Iterator[tuple]:
    """The database side of a pair export: ``(pairs, messages by prompt id, texts by sample id)`` per chunk of
    at most EXPORT_CHUNK_PAIRS pairs: rankings in id order, each ranking's pairs in id order.

    The rankings that count (the project's, of the chosen sources and round, not excluded) are read through a
    server-side cursor with what their pairs share (labeler, source, round); each chunk's pairs are then read
    by ranking, and the chunk's prompts and samples once (a prompt's C(K,2) × overlap pairs share its text).
    Walking the pairs themselves joined every pair to its ranking, prompt, round and labeler: 3.69 µs of
    PostgreSQL per pair against 2.06 µs this way (``bench/export_walk.py``, 1M pairs). Memory is one
    chunk, whatever the number of pairs."""
    # Excluded in review: left out. NOT EXISTS, not a LEFT JOIN … IS NULL: PostgreSQL estimates the latter far
    # too low when the exclusion table is empty, then sorts everything before the first row (95 s for the
    # pairs at 1M prompts); with the anti-join it walks the primary key and streams at once.
    excluded = RankingExclusion.objects.filter(ranking=OuterRef("pk"))
    rankings = Ranking.objects.filter(~Exists(excluded), prompt__project=project, source__in=selection.sources)
    if round_number is not None:
        rankings = rankings.filter(prompt__round__number=round_number)
    rankings = rankings.order_by("id").values_list("id", _username_field(""), "source", "prompt__round__number")
    per_chunk = max(1, EXPORT_CHUNK_PAIRS // math.comb(project.k, 2))  # a ranking has at most C(K, 2) pairs
    chunk: dict[int, tuple] = {}
    for ranking_id, *shared in rankings.iterator(chunk_size=per_chunk):
        chunk[ranking_id] = tuple(shared)
        if len(chunk) == per_chunk:
            yield _with_texts(_pairs_of(chunk))
            chunk = {}
    if chunk:
        yield _with_texts(_pairs_of(chunk))


def _pairs_of(rankings: dict[int, tuple]) -> list[tuple]:
    """The pairs of these rankings ({id: (labeler, source, round)}) as the export's tuples, rankings in id order
    and each ranking's pairs in id order."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT ranking_id, margin, weight, prompt_id, chosen_id, rejected_id FROM "
                           f"{connection.ops.quote_name(PairwiseComparison._meta.db_table)} "
                           "WHERE ranking_id = ANY(%s) ORDER BY ranking_id, id", [list(rankings)])
            rows = cursor.fetchall()
    else:
        rows = PairwiseComparison.objects.filter(ranking_id__in=list(rankings)).order_by("ranking_id", "id") \
            .values_list("ranking_id", "margin", "weight", "prompt_id", "chosen_id", "rejected_id")
    return [(margin, weight, *rankings[ranking_id], prompt_id, ranking_id, chosen_id, rejected_id)
            for ranking_id, margin, weight, prompt_id, chosen_id, rejected_id in rows]


def _with_texts(chunk: list[tuple]) -> tuple[list[tuple], dict, dict]:
    return (chunk, _texts_by_id(Prompt, "messages", {p[5] for p in chunk}),
            _texts_by_id(Sample, "text", {p[i] for p in chunk for i in (7, 8)}))


def _pair_rows(chunks: Iterable[tuple], *, conversational: bool, selection: SourceSelection,
               as_jsonl: bool = False) -> Iterator[dict | str]:
    """One row per pair of each chunk (``as_jsonl``: as a finished JSONL line); texts rendered and JSON-encoded
    once per chunk."""
    for chunk, messages, texts in chunks:
        yield from _pair_chunk(chunk, messages=messages, texts=texts, conversational=conversational,
                               selection=selection, as_jsonl=as_jsonl)


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


def _pair_chunk(chunk: list[tuple], *, messages: dict, texts: dict, conversational: bool, selection: SourceSelection,
                as_jsonl: bool) -> Iterator[dict | str]:
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


def _ranking_chunks(project: Project, round_number: int | None, *, selection: SourceSelection) -> Iterator[tuple]:
    """The database side of a rankings export: ``(rankings, their entries)`` per chunk of CHUNK_ROWS rankings;
    rankings are read through a server-side cursor, and each chunk's entries with one more query."""
    rankings = Ranking.objects.filter(prompt__project=project, exclusion__isnull=True,  # excluded in review: left out
                                      source__in=selection.sources)
    if round_number is not None:
        rankings = rankings.filter(prompt__round__number=round_number)
    rankings = rankings.order_by("id").values(
        "id", "prompt_id", "prompt__external_id", "prompt__round__number", "prompt__messages", "time_spent_ms",
        _username_field(""), "source", "created_at", "comment", "all_bad",
    )
    chunk: list[dict] = []
    for ranking in rankings.iterator(chunk_size=CHUNK_ROWS):
        chunk.append(ranking)
        if len(chunk) == CHUNK_ROWS:
            yield _with_entries(chunk)
            chunk = []
    if chunk:
        yield _with_entries(chunk)


def _with_entries(chunk: list[dict]) -> tuple[list[dict], dict[int, list[dict]]]:
    entries: dict[int, list[dict]] = {r["id"]: [] for r in chunk}
    rows = RankingEntry.objects.filter(ranking_id__in=list(entries)).order_by("ranking_id", "tier", "shown_position")
    for e in rows.values("ranking_id", "sample_id", "tier", "shown_position", "flags", "sample__text",
                         "sample__model_name"):
        entries[e["ranking_id"]].append(e)
    return chunk, entries


def _ranking_rows(chunks: Iterable[tuple]) -> Iterator[dict]:
    """One row per ranking of each chunk."""
    labeler = _username_field("")
    for chunk, entries in chunks:
        for ranking in chunk:
            own = entries[ranking["id"]]
            tiers: dict[int, list[dict]] = {}
            for e in own:  # already sorted by tier, then shown position
                tiers.setdefault(e["tier"], []).append(
                    {"sample_id": e["sample_id"], "text": e["sample__text"], "model": e["sample__model_name"]})
            yield {
                "ranking_id": ranking["id"], "prompt_id": ranking["prompt_id"],
                "external_id": ranking["prompt__external_id"], "round": ranking["prompt__round__number"],
                "messages": ranking["prompt__messages"], "tiers": [tiers[t] for t in sorted(tiers)],
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


class _ReadFailed:
    def __init__(self, error: BaseException):
        self.error = error


_READ_DONE = object()


def _read_ahead(read: Callable[[], Iterator], *, depth: int = READ_AHEAD_CHUNKS) -> Iterator:
    """The items of ``read()`` (the database side of an export), read inside one transaction.

    On PostgreSQL, outside a transaction, ``read()`` runs in a thread of its own with its own connection and
    stays up to ``depth`` chunks ahead: the database computes the next chunk while this thread encodes the
    last (a pair export is about 40% database time and 60% encoding, one after the other without this; the
    driver waits for the server without holding the GIL). The items arrive in order; an error in the
    reader is raised here; closing this generator (a client that went away) stops the reader, and the
    reader's connection is closed when it ends. Inside a transaction (a caller's ``atomic()``, tests) or on
    another database, ``read()`` runs here, in the caller's transaction and on its connection, since a second
    connection would not see its uncommitted rows.

    The transaction matters on PostgreSQL: outside one, Django declares the server-side cursor WITH HOLD,
    which PostgreSQL materialises whole at the implicit commit (the first row came after the entire query:
    59 s for 10M pairs); inside one it is a plain cursor that streams, over one snapshot.
    """
    if connection.vendor != "postgresql" or connection.in_atomic_block:
        with transaction.atomic():
            yield from read()
        return
    handoff: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def hand_over(item) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            with transaction.atomic():
                for item in read():
                    if not hand_over(item):
                        return
            hand_over(_READ_DONE)
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, which raises it
            hand_over(_ReadFailed(error))
        finally:
            connection.close()  # this thread's own connection

    thread = threading.Thread(target=reader, name="export-read-ahead", daemon=True)
    thread.start()
    try:
        while (item := handoff.get()) is not _READ_DONE:
            if isinstance(item, _ReadFailed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


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
        rows = _ranking_rows(_read_ahead(lambda: _ranking_chunks(project, round_number, selection=selection)))
    else:
        chunks = _read_ahead(lambda: _pair_chunks(project, round_number, selection=selection))
        rows = _pair_rows(chunks, conversational=fmt == "conversational", selection=selection,
                          as_jsonl=file_format == "jsonl")
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
