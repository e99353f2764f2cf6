"""Read a project's rankings as numpy columns (``annotation.quality.arrays.RankingTable``) for the quality
report: the rankings and entries that ``selectors.ranking_records`` lists, without a Python object per row.

On PostgreSQL each column comes back as one ``int8[]`` per slice of 2^20 ranking ids (``array_agg``, binary
results), parsed with ``np.frombuffer``: one query for the rankings, then one per slice for its entries,
which sends the slice's ranking ids back as they came (``= ANY``, hashed) instead of joining the project's
prompts again. No per-row work in Python: a binary COPY cost one psycopg call per row (1.75 s of client CPU
for the 833,340 rows at 1M pairs). Elsewhere (SQLite) ORM tuples.
"""
from __future__ import annotations

import datetime

import numpy as np
import psycopg
from django.contrib.auth import get_user_model
from django.db import connection
from psycopg.adapt import Dumper, Loader

from annotation import provenance
from annotation.models import Prompt, Ranking, RankingEntry, Round
from annotation.quality.arrays import RankingTable, argsort_pairs
from annotation.quality.models import RankingExclusion

EPOCH = datetime.date(1970, 1, 1)
RANKING_COLUMNS = ("ranking_id", "prompt_id", "round_number", "labeler_id", "time_spent_ms", "day", "source")
SLICE_BITS = 20  # a query reads 2^20 ranking ids: arrays of at most ~1M rankings and their entries
INT8_ARRAY_OID = 1016


def ranking_table(*, project, round_number: int | None = None, use_arrays: bool | None = None) -> RankingTable:
    """The project's (or round's) rankings, arena votes and excluded rankings left out, in id order, and their
    entries in (ranking, tier, shown position) order. ``use_arrays``: the PostgreSQL reader (default there).
    A source outside ``Ranking.Source`` reads as "(unknown)"."""
    sources = (*Ranking.Source.values, "(unknown)")
    if use_arrays is None:
        use_arrays = connection.vendor == "postgresql"
    load = _columns_by_arrays if use_arrays else _columns_by_orm
    rankings, entries = load(project=project, round_number=round_number, sources=sources)
    order = np.argsort(rankings[0], kind="stable")
    columns = {name: values[order] for name, values in zip(RANKING_COLUMNS, rankings)}
    ranking, sample, tier, shown = entries
    row = np.minimum(np.searchsorted(columns["ranking_id"], ranking), max(len(order) - 1, 0))
    loaded = columns["ranking_id"][row] == ranking if len(order) else np.zeros(len(ranking), bool)
    row, sample, tier, shown = row[loaded], sample[loaded], tier[loaded], shown[loaded]  # a ranking read in between
    by_row = argsort_pairs(row, (tier << 16) | shown)  # RankingEntry's ordering: ranking, tier, shown position
    labelers = np.unique(columns["labeler_id"][columns["labeler_id"] != 0]).tolist()
    usernames = dict(get_user_model().objects.filter(pk__in=labelers).values_list("pk", "username"))
    return RankingTable(**columns, entry_row=row[by_row], entry_sample=sample[by_row], entry_tier=tier[by_row],
                        entry_shown=shown[by_row], sources=sources, usernames=usernames)


def _columns_by_orm(*, project, round_number, sources) -> tuple[list, list]:
    rankings = Ranking.objects.filter(prompt__project=project, exclusion__isnull=True).exclude(
        source__in=provenance.ARENA_SOURCES)
    if round_number is not None:
        rankings = rankings.filter(prompt__round__number=round_number)
    code = {name: i for i, name in enumerate(sources[:-1])}
    rows = [(pk, prompt, number, labeler or 0, ms, (at.date() - EPOCH).days, code.get(source, len(sources) - 1))
            for pk, prompt, number, labeler, ms, at, source in rankings.values_list(
                "id", "prompt_id", "prompt__round__number", "labeler_id", "time_spent_ms", "created_at", "source")]
    entries = list(RankingEntry.objects.filter(ranking__in=rankings).order_by().values_list(
        "ranking_id", "sample_id", "tier", "shown_position"))
    return _columns(rows, len(RANKING_COLUMNS)), _columns(entries, 4)


def _columns(rows: list[tuple], n: int) -> list[np.ndarray]:
    return [np.array(column, np.int64) for column in (zip(*rows) if rows else [()] * n)]


class _RawInt8Array(Loader):
    """An int8[] result in binary format, kept as bytes for ``_int8_array``."""
    format = psycopg.pq.Format.BINARY

    def load(self, data) -> bytes:
        return bytes(data)


class _Int8Array(bytes):
    """An int8[] in binary format, as read: sent back as a parameter unchanged."""


class _RawInt8ArrayDumper(Dumper):
    format = psycopg.pq.Format.BINARY
    oid = INT8_ARRAY_OID

    def dump(self, obj: _Int8Array) -> bytes:
        return obj


def _int8_array(data: bytes | None) -> np.ndarray:
    """A one-dimensional int8[] without NULLs in PostgreSQL's binary format: 20 header bytes (dimensions,
    null flag, element type, length, lower bound), then per element its length (4) and value (8), big-endian."""
    if data is None or int.from_bytes(data[0:4], "big") == 0:
        return np.zeros(0, np.int64)
    if int.from_bytes(data[0:4], "big") != 1 or int.from_bytes(data[4:8], "big") != 0:
        raise ValueError("expected a one-dimensional int8[] without NULLs")
    n = int.from_bytes(data[12:16], "big")
    return np.frombuffer(data, np.dtype([("length", ">i4"), ("value", ">i8")]), n, offset=20)["value"].astype(np.int64)


def _columns_by_arrays(*, project, round_number, sources) -> tuple[list, list]:
    known = ", ".join(f"'{name}'" for name in sources[:-1])  # constants of the model, not input
    arena = ", ".join(f"'{name}'" for name in provenance.ARENA_SOURCES)
    where = [f"p.project_id = {int(project.pk)}", f"r.source NOT IN ({arena})",
             f"NOT EXISTS (SELECT 1 FROM {RankingExclusion._meta.db_table} x WHERE x.ranking_id = r.id)"]
    if round_number is not None:
        where.append(f"rd.number = {int(round_number)}")
    connection.ensure_connection()
    with psycopg.Cursor(connection.connection) as cursor:  # server-side binding: binary results and parameters
        cursor.adapters.register_loader(INT8_ARRAY_OID, _RawInt8Array)
        cursor.adapters.register_dumper(_Int8Array, _RawInt8ArrayDumper)
        top = cursor.execute(f"SELECT COALESCE(max(id), 0) FROM {Ranking._meta.db_table}").fetchone()[0]
        slices = cursor.execute(  # one row per slice of 2^20 ranking ids (the series gives the planner their number)
            "SELECT s.slice, array_agg(r.id), array_agg(r.prompt_id), array_agg(rd.number::int8), "
            "array_agg(COALESCE(r.labeler_id, 0)::int8), array_agg(r.time_spent_ms::int8), "
            "array_agg(((r.created_at AT TIME ZONE 'UTC')::date - DATE '1970-01-01')::int8), "
            f"array_agg((COALESCE(array_position(ARRAY[{known}]::text[], r.source::text), {len(sources)}) - 1)::int8) "
            f"FROM {Ranking._meta.db_table} r JOIN generate_series(0, {top >> SLICE_BITS}) AS s(slice) "
            f"ON r.id >> {SLICE_BITS} = s.slice JOIN {Prompt._meta.db_table} p ON p.id = r.prompt_id "
            f"JOIN {Round._meta.db_table} rd ON rd.id = p.round_id WHERE {' AND '.join(where)} GROUP BY s.slice",
            binary=True).fetchall()
        rankings, entries = [], []
        for number, ids, *columns in slices:
            entry_sql = (f"SELECT array_agg(e.ranking_id), array_agg(e.sample_id), array_agg(e.tier::int8), "
                         f"array_agg(e.shown_position::int8) FROM {RankingEntry._meta.db_table} e "
                         "WHERE e.ranking_id >= %s AND e.ranking_id < %s AND e.ranking_id = ANY(%b)")
            bounds = (number << SLICE_BITS, (number + 1) << SLICE_BITS)
            rows = cursor.execute(entry_sql, (*bounds, _Int8Array(ids)), binary=True).fetchone()
            rankings.append([_int8_array(v) for v in (ids, *columns)])
            entries.append([_int8_array(v) for v in rows])
    return _concatenate(rankings, len(RANKING_COLUMNS)), _concatenate(entries, 4)


def _concatenate(parts: list[list[np.ndarray]], n: int) -> list[np.ndarray]:
    return [np.concatenate([part[i] for part in parts]) if parts else np.zeros(0, np.int64) for i in range(n)]
