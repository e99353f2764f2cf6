"""A held-out accuracy with its 95% Wilson interval, and whether the held-out set is too small to mean anything.

Pure Python (no Django): the pages, the API, the command line and the loop report accuracies through
``accuracy_with_interval`` so that no accuracy is shown without its interval.

The interval treats the held-out pairs as independent; the C(K,2) pairs of one prompt are not, so the true
uncertainty is wider still. That is one more reason to warn early: below ``MIN_PAIRS`` held-out pairs, or
with an interval wider than ``MAX_WIDTH``, the figure says little about the reward model.
"""
from __future__ import annotations

import math

Z_95 = 1.959964  # two-sided 95% normal quantile
MIN_PAIRS = 100
MAX_WIDTH = 0.2  # an interval wider than ±0.1 cannot tell a useful reward model from a coin


def wilson_interval(accuracy: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval of a proportion ``accuracy`` observed on ``n`` trials (Wilson 1927).

    >>> [round(x, 3) for x in wilson_interval(0.5, 100)]
    [0.404, 0.596]
    """
    if n <= 0:
        return 0.0, 1.0
    p = min(max(accuracy, 0.0), 1.0)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)


def accuracy_with_interval(accuracy, pairs) -> dict | None:
    """{accuracy, pairs, ci_low, ci_high, too_small, warning} for an accuracy on ``pairs`` held-out pairs;
    None when there is no accuracy (no held-out set). ``pairs`` unknown: no interval, and a warning."""
    if accuracy is None or (isinstance(accuracy, float) and math.isnan(accuracy)):
        return None
    accuracy = float(accuracy)
    if not pairs:
        return {"accuracy": accuracy, "pairs": None, "ci_low": None, "ci_high": None, "too_small": True,
                "warning": "the number of held-out pairs is unknown, so is the uncertainty"}
    pairs = int(pairs)
    low, high = wilson_interval(accuracy, pairs)
    too_small = pairs < MIN_PAIRS or high - low > MAX_WIDTH
    warning = (f"only {pairs} held-out pairs: the 95% interval {low:.2f}–{high:.2f} is too wide for this accuracy "
               "to mean much; hold out more prompts (eval_fraction) or collect more rankings") if too_small else ""
    return {"accuracy": accuracy, "pairs": pairs, "ci_low": round(low, 4), "ci_high": round(high, 4),
            "too_small": too_small, "warning": warning}


def accuracy_text(info: dict | None) -> str:
    """"0.667 (95% CI 0.47–0.82, 24 pairs)" for people; "—" without an accuracy."""
    if info is None:
        return "—"
    if info["pairs"] is None:
        return f"{info['accuracy']:.3f} (held-out pairs unknown)"
    return f"{info['accuracy']:.3f} (95% CI {info['ci_low']:.2f}–{info['ci_high']:.2f}, {info['pairs']} pairs)"


def accuracy_of_summary(summary: dict | None) -> dict | None:
    """The held-out pairwise accuracy of a run's summary: a reward model's ``accuracy`` or DPO's implicit
    ``reward_accuracy``, over ``final_eval.pairs``."""
    final = (summary or {}).get("final_eval") or {}
    value = final.get("accuracy", final.get("reward_accuracy"))
    return accuracy_with_interval(value, final.get("pairs"))


def accuracy_of_metrics(metrics: dict | None) -> dict | None:
    """The same from an artifact's flat metrics (``eval_accuracy``/``eval_reward_accuracy``, ``eval_pairs``)."""
    metrics = metrics or {}
    value = metrics.get("eval_accuracy", metrics.get("eval_reward_accuracy"))
    return accuracy_with_interval(value, metrics.get("eval_pairs"))
