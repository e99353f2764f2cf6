"""Checks of what a labeler submits: tiers that rank every response once, known flags, the shown order.

A ranking is a list of tiers, best first; each tier is a list of sample ids, and samples in the same tier
are tied. What a ranking *means* (scores → tiers with the tie rule, tiers → pairs) lives in the pure
``preferences`` package; this module only validates input and raises ``RankingInvalid`` naming the problem.
Nothing here touches the database, so the same checks run in the browser's service, the importers and the
quality services.
"""
from collections.abc import Iterable, Mapping, Sequence

from annotation.errors import RankingInvalid

Tiers = list[list[int]]


def _as_id(value: object, *, location: str) -> int:
    """An int id (also from a JSON string of digits); bools are rejected although Python calls them ints."""
    if isinstance(value, bool):
        raise RankingInvalid(f"expected a sample id, got {value!r}", location=location)
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise RankingInvalid(f"expected a sample id, got {str(value)[:40]!r}", location=location)


def tiers_validate(*, tiers: object, sample_ids: Iterable[int]) -> Tiers:
    """Return the tiers as lists of ints if they rank every one of ``sample_ids`` exactly once.

    Raises RankingInvalid naming the first problem: not a list, an empty tier, an id that is not one of
    this prompt's samples, an id given twice, or samples left out.
    """
    expected = set(sample_ids)
    if not isinstance(tiers, (list, tuple)) or not tiers:
        raise RankingInvalid("tiers must be a non-empty list of tiers, best first", location="tiers")
    seen: set[int] = set()
    clean: Tiers = []
    for i, tier in enumerate(tiers):
        if not isinstance(tier, (list, tuple)):
            raise RankingInvalid("each tier must be a list of sample ids", location=f"tiers[{i}]")
        if not tier:
            raise RankingInvalid("empty tier", location=f"tiers[{i}]")
        clean_tier = []
        for j, raw in enumerate(tier):
            sample_id = _as_id(raw, location=f"tiers[{i}][{j}]")
            if sample_id not in expected:
                raise RankingInvalid(f"sample {sample_id} is not a response to this prompt", location=f"tiers[{i}][{j}]")
            if sample_id in seen:
                raise RankingInvalid(f"sample {sample_id} is ranked more than once", location=f"tiers[{i}][{j}]")
            seen.add(sample_id)
            clean_tier.append(sample_id)
        clean.append(clean_tier)
    missing = sorted(expected - seen)
    if missing:
        raise RankingInvalid(f"samples {missing} are not ranked; rank all {len(expected)} responses", location="tiers")
    return clean


def flags_validate(*, flags: object, sample_ids: Iterable[int], allowed: Iterable[str]) -> dict[int, list[str]]:
    """Return ``{sample id: [flag, ...]}`` with known flags only, de-duplicated and sorted; empty lists dropped."""
    if flags is None:
        return {}
    if not isinstance(flags, Mapping):
        raise RankingInvalid("flags must map sample ids to lists of flags", location="flags")
    expected, allowed = set(sample_ids), set(allowed)
    clean: dict[int, list[str]] = {}
    for raw_key, values in flags.items():
        sample_id = _as_id(raw_key, location="flags")
        location = f"flags[{sample_id}]"
        if sample_id not in expected:
            raise RankingInvalid(f"sample {sample_id} is not a response to this prompt", location=location)
        if not isinstance(values, (list, tuple)):
            raise RankingInvalid("flags must be a list", location=location)
        for value in values:
            if value not in allowed:
                raise RankingInvalid(
                    f"unknown flag {str(value)[:40]!r}; expected one of {sorted(allowed)}", location=location
                )
        if values:
            clean[sample_id] = sorted(set(values))
    return clean


def shown_positions(*, shown_order: object, sample_ids: Sequence[int]) -> dict[int, int]:
    """Map sample id -> position shown to the labeler; without a shown order, the samples' own order."""
    if shown_order is None:
        return {sample_id: position for position, sample_id in enumerate(sample_ids)}
    if not isinstance(shown_order, (list, tuple)):
        raise RankingInvalid("shown order must be a list of sample ids", location="shown_order")
    order = [_as_id(raw, location="shown_order") for raw in shown_order]
    if sorted(order) != sorted(sample_ids):
        raise RankingInvalid("shown order must list every sample of the prompt exactly once", location="shown_order")
    return {sample_id: position for position, sample_id in enumerate(order)}
