"""Plain data passed from the Django side to the trainers. No Django imports in training/ml."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from preferences.tiers import pairs_from_tiers


@dataclass(frozen=True)
class RankedGroup:
    """The K responses of one prompt and every ranking of them (one per labeler).

    ``rankings[r]`` is a list of tiers, best first; each tier lists indices into ``responses``;
    responses in one tier are tied and give no pair (``preferences.tiers``). ``ref_logprobs[i]`` is log π_ref(response_i | prompt)
    summed over response tokens under the policy that generated it (None where unknown).
    """

    prompt_id: int
    messages: list[dict]  # [{"role": "user"|"assistant"|"system", "content": str}, ...]
    responses: list[str]  # K
    rankings: list[list[list[int]]]
    weights: list[float] = field(default_factory=list)  # one per ranking; empty means all 1.0
    ref_logprobs: list[float | None] = field(default_factory=list)

    def pairs(self) -> list[tuple[int, int, int, float]]:
        """(chosen index, rejected index, margin = tier distance, weight) for every ranking."""
        out = []
        for r, tiers in enumerate(self.rankings):
            weight = self.weights[r] if self.weights else 1.0
            out.extend((chosen, rejected, margin, weight) for chosen, rejected, margin in pairs_from_tiers(tiers))
        return out


class TrainHooks(Protocol):
    """How a trainer reports to whoever runs it (the run runner writes these to the database)."""

    def on_step(self, step: int, total: int, metrics: dict[str, float]) -> None: ...

    def on_eval(self, step: int, metrics: dict[str, float]) -> None: ...

    def should_stop(self) -> bool: ...

    def log(self, message: str) -> None: ...


class NullHooks:
    """Hooks that record metrics in memory; for tests, benchmarks and notebooks."""

    def __init__(self) -> None:
        self.steps: list[tuple[int, dict[str, float]]] = []
        self.evals: list[tuple[int, dict[str, float]]] = []
        self.messages: list[str] = []

    def on_step(self, step: int, total: int, metrics: dict[str, float]) -> None:
        self.steps.append((step, dict(metrics)))

    def on_eval(self, step: int, metrics: dict[str, float]) -> None:
        self.evals.append((step, dict(metrics)))

    def should_stop(self) -> bool:
        return False

    def log(self, message: str) -> None:
        self.messages.append(message)
