"""The arena's leaderboard from votes, without the database: Bradley-Terry strengths with bootstrap intervals.

``leaderboard_from_votes`` takes ``(model_a, model_b, outcome)`` votes (a tie and "both bad" count half a win
each way, ``vote_comparisons``) and gives one row per model: strength, Elo-style rating, rank and record.
``lab.selectors.arena_leaderboard`` feeds it a project's counted votes.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from annotation.quality.metrics import bradley_terry
from lab.models import ArenaVote

ELO_SCALE = 400 / math.log(10)  # rating = 1000 + ELO_SCALE · log-strength: a 400-point gap is 10:1 odds


def vote_comparisons(votes: Sequence[tuple], counts: Sequence[float] | None = None) -> list[tuple]:
    """``(model_a, model_b, outcome)`` votes → ``(winner, loser, weight)``; tie and both-bad are half a win each."""
    out = []
    for i, (a, b, outcome) in enumerate(votes):
        weight = 1.0 if counts is None else float(counts[i])
        if weight == 0:
            continue
        if outcome == ArenaVote.Outcome.A:
            out.append((a, b, weight))
        elif outcome == ArenaVote.Outcome.B:
            out.append((b, a, weight))
        else:
            out.extend([(a, b, weight / 2), (b, a, weight / 2)])
    return out


def leaderboard_from_votes(
    votes: Sequence[tuple], *, resamples: int = 200, seed: int = 0, confidence: float = 0.95, prior: float = 0.5,
) -> list[dict]:
    """Bradley-Terry log-strengths of every model in ``votes`` with percentile-bootstrap intervals, best first.

    The bootstrap resamples the votes with replacement (``resamples`` times, numpy generator seeded with
    ``seed``): drawing n votes from the n observed ones is a multinomial over the distinct votes, so each
    resample is one multinomial draw. ``rank`` is 1 + the number of models whose interval lies wholly above.
    Each row: ``log_strength`` (natural log, mean 0 over the models) with ``log_strength_low``/``_high``,
    ``strength`` = exp(log_strength) with ``strength_low``/``_high`` (P(a beats b) = s_a / (s_a + s_b)), and
    ``rating`` = 1000 + 400·log₁₀(strength) with ``rating_low``/``_high``.
    """
    import numpy as np

    distinct = Counter(votes)
    keys, observed = list(distinct), np.array(list(distinct.values()), dtype=float)
    models = sorted({m for a, b, _ in keys for m in (a, b)}, key=repr)
    point = bradley_terry(vote_comparisons(keys, observed), items=models, prior=prior)
    rng = np.random.default_rng(seed)
    draws = {m: [] for m in models}
    n = int(observed.sum())
    for _ in range(resamples if n else 0):
        counts = rng.multinomial(n, observed / n)  # (len(keys),) one bootstrap sample of the votes
        strengths = bradley_terry(vote_comparisons(keys, counts), items=models, prior=prior)
        for m in models:
            draws[m].append(strengths[m])
    tail = (1 - confidence) / 2
    rows = []
    for m in models:
        low, high = (np.quantile(draws[m], [tail, 1 - tail]).tolist() if draws[m] else (point[m], point[m]))
        rows.append({"model": m, "log_strength": point[m], "log_strength_low": low, "log_strength_high": high,
                     **_record(m, keys, observed)})
    for row in rows:
        row["rank"] = 1 + sum(other["log_strength_low"] > row["log_strength_high"] for other in rows)
        for suffix in ("", "_low", "_high"):
            log_strength = row[f"log_strength{suffix}"]
            row[f"strength{suffix}"] = math.exp(log_strength)  # the BT strength itself: odds = ratio of strengths
            row[f"rating{suffix}"] = round(1000 + ELO_SCALE * log_strength, 1)
    return sorted(rows, key=lambda r: (-r["log_strength"], repr(r["model"])))


def _record(model, keys: list[tuple], counts) -> dict:
    """Votes, wins, losses, ties and both-bad verdicts of one model."""
    record = Counter()
    for (a, b, outcome), count in zip(keys, counts):
        if model not in (a, b):
            continue
        side = ArenaVote.Outcome.A if model == a else ArenaVote.Outcome.B
        if outcome in (ArenaVote.Outcome.TIE, ArenaVote.Outcome.BOTH_BAD):
            verdict = "ties" if outcome == ArenaVote.Outcome.TIE else "both_bad"
        else:
            verdict = "wins" if outcome == side else "losses"
        record[verdict] += int(count)
        record["votes"] += int(count)
    return {k: record[k] for k in ("votes", "wins", "losses", "ties", "both_bad")}
