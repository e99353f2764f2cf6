"""A project's rankings as numpy columns, grouped into dense blocks of prompts, for the quality report at
millions of rankings (``annotation.quality.array_figures``). No database here: ``selectors.ranking_table``
loads the columns.

A block holds the prompts that have the same number of rankings ``m`` and of distinct ranked samples ``u``:
their tiers as a ``(P, m, u)`` array (samples in id order, -1 where a ranking does not rank that sample) and,
for each of the q = C(u, 2) sample pairs, each ranking's relation (+1: the lower id preferred, -1: the other,
0: a tie). At overlap 3 and K = 4 nearly every prompt falls in one block, so a figure is a handful of array
operations instead of a Python loop per prompt.

``fsums`` sums floats per group exactly as ``math.fsum`` does (correctly rounded), so means computed here are
bit for bit those of ``statistics.fmean`` over the same values, in any order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

MISSING = -1  # tier of a sample that a ranking does not rank
CHUNK_ELEMENTS = 4_000_000  # largest temporary array of a chunk of prompts (elements)


@dataclass
class RankingTable:
    """One row per ranking, in id order; entries in (ranking, tier, shown position) order, as the ORM lists them."""
    ranking_id: np.ndarray  # int64
    prompt_id: np.ndarray  # int64
    round_number: np.ndarray  # int64
    labeler_id: np.ndarray  # int64, 0 = no labeler (imported)
    source: np.ndarray  # int64 index into ``sources``
    time_spent_ms: np.ndarray  # int64
    day: np.ndarray  # int64, days since 1970-01-01 of created_at (UTC)
    entry_row: np.ndarray  # int64 row of the entry's ranking
    entry_sample: np.ndarray  # int64
    entry_tier: np.ndarray  # int64
    entry_shown: np.ndarray  # int64
    sources: tuple[str, ...]
    usernames: dict[int, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ranking_id)

    def source_in(self, names) -> np.ndarray:
        """Row mask: the ranking's source is one of ``names``."""
        return np.isin(self.source, [i for i, s in enumerate(self.sources) if s in names])


@dataclass
class Block:
    """Prompts with m rankings over u distinct samples each (see the module docstring)."""
    prompts: np.ndarray  # (P,) prompt index (0.. in prompt-id order)
    rows: np.ndarray  # (P, m) table rows, in id order within each prompt
    samples: np.ndarray  # (P, u) sample ids in id order
    tiers: np.ndarray  # (P, m, u) int16, MISSING where not ranked
    shown: np.ndarray  # (P, m, u) int16
    rel: np.ndarray  # (P, m, q) int8 relation of each sample pair
    both: np.ndarray  # (P, m, q) bool: the ranking ranks both samples of the pair

    @property
    def m(self) -> int:
        return self.rows.shape[1]


@dataclass
class Prompts:
    """The table's prompts: each row's prompt index and the blocks."""
    ids: np.ndarray  # (n_prompts,) prompt ids, ascending
    of_row: np.ndarray  # (n_rows,) prompt index of each table row
    first_row: np.ndarray  # (n_prompts,) smallest row (= earliest ranking) of each prompt
    blocks: list[Block]


def sample_pairs(u: int) -> tuple[np.ndarray, np.ndarray]:
    return np.triu_indices(u, 1)


def prompts_of(table: RankingTable) -> Prompts:
    """Group the table's rows by prompt and the prompts into blocks of equal (m, u)."""
    n = len(table)
    order = np.argsort(table.prompt_id, kind="stable")  # rows by prompt, id order within (the table is in id order)
    ids, starts, counts = np.unique(table.prompt_id[order], return_index=True, return_counts=True)
    of_row = np.empty(n, np.int64)
    of_row[order] = np.repeat(np.arange(len(ids)), counts)
    local = np.empty(n, np.int64)
    local[order] = np.arange(n) - np.repeat(starts, counts)
    item, u_of = _items(table, of_row, len(ids))
    keys = u_of * (counts.max(initial=0) + 1) + counts
    block_keys, block_of = np.unique(keys, return_inverse=True)
    by_block = np.argsort(block_of, kind="stable")  # prompts block by block, prompt-id order within
    prompt_bounds = np.searchsorted(block_of[by_block], np.arange(len(block_keys) + 1))
    position = np.empty(len(ids), np.int64)  # each prompt's place in its block
    for b in range(len(block_keys)):
        position[by_block[prompt_bounds[b]:prompt_bounds[b + 1]]] = np.arange(prompt_bounds[b + 1] - prompt_bounds[b])
    entry_block = block_of[of_row[table.entry_row]]
    entries_by_block = np.argsort(entry_block, kind="stable")
    entry_bounds = np.searchsorted(entry_block[entries_by_block], np.arange(len(block_keys) + 1))
    blocks = []
    for b in range(len(block_keys)):
        prompts = by_block[prompt_bounds[b]:prompt_bounds[b + 1]]
        rows = order[starts[prompts][:, None] + np.arange(counts[prompts[0]])]
        entries = entries_by_block[entry_bounds[b]:entry_bounds[b + 1]]
        row = table.entry_row[entries]
        at = (position[of_row[row]], local[row], item[entries])
        blocks.append(_block(table, prompts, rows, int(u_of[prompts[0]]), entries, at))
    return Prompts(ids=ids, of_row=of_row, first_row=order[starts], blocks=blocks)


def _items(table: RankingTable, of_row: np.ndarray, n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
    """Each entry's sample index within its prompt's ranked samples (in id order), and u per prompt."""
    prompt = of_row[table.entry_row]
    order = argsort_pairs(prompt, table.entry_sample)
    p, s = prompt[order], table.entry_sample[order]
    new = np.ones(len(order), bool)
    new[1:] = (p[1:] != p[:-1]) | (s[1:] != s[:-1])
    key = np.cumsum(new) - 1  # distinct (prompt, sample) index
    key_prompt = p[new]
    u_of = np.bincount(key_prompt, minlength=n_prompts)
    first_key = np.concatenate([[0], np.cumsum(u_of)[:-1]])
    item = np.empty(len(order), np.int64)
    item[order] = key - first_key[p]
    return item, u_of


def argsort_pairs(major: np.ndarray, minor: np.ndarray) -> np.ndarray:
    """``np.lexsort((minor, major))`` for non-negative integers, as one int64 key when both fit (several times
    faster than lexsort at millions of rows)."""
    if not len(major):
        return np.zeros(0, np.int64)
    bits = max(int(minor.max()).bit_length(), 1)
    if int(major.max()).bit_length() + bits > 62 or minor.min() < 0 or major.min() < 0:
        return np.lexsort((minor, major))
    return np.argsort((major.astype(np.int64) << bits) | minor, kind="stable")


def _block(table: RankingTable, prompts, rows, u: int, entries, at) -> Block:
    """The block of ``prompts``; ``at``: each of ``entries``' (prompt in block, ranking in prompt, sample)."""
    P, m = rows.shape
    tiers = np.full((P, m, u), MISSING, np.int16)
    shown = np.full((P, m, u), MISSING, np.int16)
    samples = np.zeros((P, u), np.int64)
    tiers[at] = table.entry_tier[entries]
    shown[at] = table.entry_shown[entries]
    samples[at[0], at[2]] = table.entry_sample[entries]
    x, y = sample_pairs(u)
    tx, ty = tiers[..., x], tiers[..., y]
    rel = ((tx < ty).astype(np.int8) - (tx > ty).astype(np.int8))
    both = (tx != MISSING) & (ty != MISSING)
    return Block(prompts=prompts, rows=rows, samples=samples, tiers=tiers, shown=shown, rel=rel, both=both)


def chunks(block: Block):
    """Slices of the block's prompts whose (P, m, m, q) temporaries stay under ``CHUNK_ELEMENTS``."""
    u = block.tiers.shape[2]
    per_prompt = max(1, block.m * block.m * max(block.rel.shape[2], 2 * u * u))
    step = max(1, CHUNK_ELEMENTS // per_prompt)
    for start in range(0, len(block.prompts), step):
        yield slice(start, start + step)


def fsums(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    """``math.fsum`` of ``values`` per group (``groups`` in 0..n_groups-1), exactly: every finite double is an
    integer multiple of 2^(e-53), e its exponent, so scaled by 2^(53 - smallest e) all values are integers,
    summed exactly in two 31-bit limbs; the integer total is rounded to a double once, as fsum rounds.
    Falls back to math.fsum per group when the values span too many binary orders for 62-bit integers."""
    values = np.asarray(values, np.float64)
    nonzero = values[values != 0]
    if not len(nonzero):
        return np.zeros(n_groups)
    _, exponents = np.frexp(nonzero)
    shift = 53 - int(exponents.min())
    if int(exponents.max()) + shift > 62 or len(values) >= 1 << 31:
        return _fsums_slow(values, groups, n_groups)
    scaled = np.ldexp(values, shift).astype(np.int64)  # exact: integral values below 2^62
    low, high = scaled & ((1 << 31) - 1), scaled >> 31
    low_sum, high_sum = np.zeros(n_groups, np.int64), np.zeros(n_groups, np.int64)
    np.add.at(low_sum, groups, low)
    np.add.at(high_sum, groups, high)
    if np.abs(high_sum).max() < 1 << 30 and low_sum.max() < 1 << 61:
        totals = (high_sum << 31) + low_sum  # fits int64; int64 -> float64 rounds to nearest even, as fsum
        return np.ldexp(totals.astype(np.float64), -shift)
    return np.array([math.ldexp(float((int(h) << 31) + int(lo)), -shift) for h, lo in zip(high_sum, low_sum)])


def _fsums_slow(values: np.ndarray, groups: np.ndarray, n_groups: int) -> np.ndarray:
    order = np.argsort(groups, kind="stable")
    bounds = np.searchsorted(groups[order], np.arange(n_groups + 1))
    return np.array([math.fsum(values[order[bounds[g]:bounds[g + 1]]].tolist()) for g in range(n_groups)])


def round4(values: np.ndarray) -> np.ndarray:
    """``round(v, 4)`` of each value: rint(v·10⁴) / 10⁴ is the double nearest Python's 4-decimal result unless
    v·10⁴ lies within a hair of a half, where the product's rounding could tip it; those go through round()."""
    scaled = values * 1e4
    out = np.rint(scaled) / 1e4
    near_half = np.abs(scaled - np.floor(scaled) - 0.5) < 1e-6
    out[near_half] = [round(v, 4) for v in values[near_half].tolist()]
    return out


def means(values: np.ndarray, groups: np.ndarray, n_groups: int) -> tuple[list, np.ndarray]:
    """Per group: (``round(fmean(v), 4)`` of its non-NaN values or None, how many values incl. NaN)."""
    counts = np.bincount(groups, minlength=n_groups)
    known = ~np.isnan(values)
    present = np.bincount(groups[known], minlength=n_groups)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = round4(fsums(values[known], groups[known], n_groups) / present)  # fmean = fsum / n
    return [m if c else None for m, c in zip(mean.tolist(), present.tolist())], counts
