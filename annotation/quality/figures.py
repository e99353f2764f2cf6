"""Quality figures over a project's ranking records, no database: agreement between labellers of the same
prompt, each labeller's row (agreement, gold, consensus, reliability weight, position bias, speed), the review
queue, agreement per day, and a prompt's consensus. ``annotation.quality.selectors`` loads the records
(``ranking_records``) and assembles the report; the metrics themselves are in ``annotation.quality.metrics``.
"""
from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations

from annotation import provenance
from annotation.quality import metrics as quality

HUMAN_SOURCES = frozenset(provenance.HUMAN_SOURCES)
TIMED_SOURCES = frozenset({"human", "gold"})  # people's rankings timed in the browser


@dataclass
class RankingRecord:
    ranking_id: int
    prompt_id: int
    round_number: int
    labeler_id: int | None
    labeler: str
    source: str
    tiers: dict[int, int]  # sample id -> tier
    shown: dict[int, int]  # sample id -> shown position
    time_spent_ms: int
    created_at: datetime
    excluded: bool


def prompt_consensus(*, records: list[RankingRecord], weights: dict[int, float] | None = None) -> dict:
    """Bradley-Terry consensus of one prompt's rankings, weighted by the labelers' reliability weights."""
    weights = weights or {}
    return quality.consensus([r.tiers for r in records], [weights.get(r.labeler_id, 1.0) for r in records])


def records_by_prompt(records: list[RankingRecord]) -> dict[int, list[RankingRecord]]:
    grouped: dict[int, list[RankingRecord]] = defaultdict(list)
    for record in records:
        grouped[record.prompt_id].append(record)
    return grouped


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.fmean(values), 4) if values else None


def agreement_summary(records: list[RankingRecord]) -> dict:
    """Agreement between labelled rankings of the same prompts: means over ranking pairs, and α ordinal."""
    labelled = [r for r in records if r.labeler_id is not None]
    agreements, taus, units = [], [], []
    for prompt_records in records_by_prompt(labelled).values():
        if len(prompt_records) < 2:
            continue
        for a, b in combinations(prompt_records, 2):
            agreements.append(quality.pairwise_agreement(a.tiers, b.tiers))
            taus.append(quality.kendall_tau_b(a.tiers, b.tiers))
        ranks = [quality.mid_ranks(r.tiers) for r in prompt_records]
        for sample_id in prompt_records[0].tiers:
            units.append([rank.get(sample_id) for rank in ranks])
    alpha = quality.krippendorff_alpha(units, metric="ordinal")
    return {
        "rankings": len(labelled), "comparisons": len(agreements), "pairwise_agreement": _mean(agreements),
        "kendall_tau_b": _mean(taus), "alpha_ordinal": round(alpha, 4) if alpha is not None else None,
    }


def _labeler_rows(records: list[RankingRecord], gold: dict, settings: dict, weights: dict) -> list[dict]:
    """Per-labeler agreement, gold, consensus, reliability, position bias and speed figures."""
    by_prompt = records_by_prompt(records)
    times = [r.time_spent_ms for r in records if _timed(r)]
    project_median = statistics.median(times) if times else None
    stats: dict[int, dict] = defaultdict(lambda: defaultdict(list))
    for prompt_id, prompt_records in by_prompt.items():
        for record in prompt_records:
            if record.labeler_id is None:
                continue
            s = stats[record.labeler_id]
            s["records"].append(record)
            # Everyone is measured against the humans only: an AI labeler never moves a human's figures.
            others = [o for o in prompt_records if o is not record and o.source in HUMAN_SOURCES]
            for other in (o for o in others if o.labeler_id is not None):
                s["agreement"].append(quality.pairwise_agreement(record.tiers, other.tiers))
                s["tau"].append(quality.kendall_tau_b(record.tiers, other.tiers))
                s["with_humans"].append(quality.pairwise_agreement(record.tiers, other.tiers))
            if prompt_id in gold:
                s["gold"].append(quality.agreement_counts(record.tiers, gold[prompt_id]))
            elif others:  # leave-one-out: the weighted majority of everyone else who ranked this prompt
                s["consensus"].append(quality.majority_agreement_counts(
                    record.tiers, [o.tiers for o in others], [weights.get(o.labeler_id, 1.0) for o in others]))
    rows = []
    for labeler_id, s in stats.items():
        own = s["records"]
        gold_agree, gold_total = map(sum, zip(*s["gold"])) if s["gold"] else (0, 0)
        cons_agree, cons_total = map(sum, zip(*s["consensus"])) if s["consensus"] else (0, 0)
        reliability, raw_weight = quality.reliability_weight(gold_agree + cons_agree, gold_total + cons_total)
        weight = quality.shrunk_weight(raw_weight, gold_total + cons_total)
        own_times = [r.time_spent_ms for r in own if _timed(r)]
        fast = sum(quality.speed_flags({r.ranking_id: r.time_spent_ms for r in own if _timed(r)},
                                       reference=project_median, ratio=settings["speed_ratio"]).values()
                   ) if project_median else 0
        median_time = statistics.median(own_times) if own_times else None
        rows.append({
            "labeler_id": labeler_id, "labeler": own[0].labeler,
            "source": Counter(r.source for r in own).most_common(1)[0][0], "rankings": len(own),
            "pairwise_agreement": _mean(s["agreement"]), "kendall_tau_b": _mean(s["tau"]),
            "agreement_with_humans": _mean(s["with_humans"]),
            "gold_pairs": gold_total, "gold_agreement": round(gold_agree / gold_total, 4) if gold_total else None,
            "consensus_pairs": cons_total,
            "consensus_agreement": round(cons_agree / cons_total, 4) if cons_total else None,
            "gold_agreeing": gold_agree, "consensus_agreeing": cons_agree,
            "reliability": reliability, "weight": weight, "raw_weight": raw_weight,
            "evidence_pairs": gold_total + cons_total,
            "position_bias": quality.position_bias((r.tiers, r.shown) for r in own),
            "median_time_ms": median_time, "fast_rankings": fast,
            "speed_flag": bool(project_median and median_time is not None
                               and median_time < settings["speed_ratio"] * project_median),
        })
    return sorted(rows, key=lambda row: row["labeler"])


def _timed(record: RankingRecord) -> bool:
    return record.labeler_id is not None and record.source in TIMED_SOURCES and record.time_spent_ms > 0


def labeler_rows_weighted(records: list[RankingRecord], gold: dict, settings: dict, *, rounds: int = 5) -> list[dict]:
    """Labeler rows at the fixed point of "weights from agreement with the weighted majority of the others":
    start from weight 1 for everyone; each pass re-weights the majority by the last pass's weights, so a
    reliable labeler is not blamed for disagreeing with an unreliable one. Stops when no weight changes."""
    weights: dict[int, float] = {}
    rows: list[dict] = []
    for _ in range(rounds):
        rows = _labeler_rows(records, gold, settings, weights)
        updated = {row["labeler_id"]: row["weight"] for row in rows}
        if updated == weights:
            break
        weights = updated
    return rows


def review_queue(*, records: list[RankingRecord], threshold: float, reviewed: set[int],
                 gold: set[int] | frozenset[int] = frozenset()) -> list[dict]:
    """Prompts with ≥ 2 labelled rankings whose mean pairwise agreement is below ``threshold``, worst first.
    Gold prompts (``gold``: their ids) never enter it: their answer is known."""
    queue = []
    for prompt_id, prompt_records in records_by_prompt([r for r in records if r.labeler_id is not None]).items():
        if len(prompt_records) < 2 or prompt_id in reviewed or prompt_id in gold:
            continue
        agreement = _mean(quality.pairwise_agreement(a.tiers, b.tiers) for a, b in combinations(prompt_records, 2))
        if agreement is not None and agreement < threshold:
            queue.append({"prompt_id": prompt_id, "rankings": len(prompt_records), "agreement": agreement})
    return sorted(queue, key=lambda row: (row["agreement"], row["prompt_id"]))


def timeline(records: list[RankingRecord]) -> dict:
    """Mean pairwise agreement per day, a ranking pair dated by its later ranking."""
    per_day: dict[str, list[float]] = defaultdict(list)
    for prompt_records in records_by_prompt([r for r in records if r.labeler_id is not None]).values():
        for a, b in combinations(prompt_records, 2):
            day = max(a.created_at, b.created_at).date().isoformat()
            per_day[day].append(quality.pairwise_agreement(a.tiers, b.tiers))
    days = sorted(per_day)
    return {"day": days, "pairwise_agreement": [_mean(per_day[d]) for d in days],
            "comparisons": [len(per_day[d]) for d in days]}
