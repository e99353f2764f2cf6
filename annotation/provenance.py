"""Label provenance: which ranking sources an export, a training snapshot or a quality figure includes.

Every ``Ranking`` carries its ``source`` (``Ranking.Source``): ``human``, ``simulated`` (a simulated human in
demos and tests), ``imported`` (a preference dataset such as hh-rlhf), ``gold`` (a labeler's ranking of a
gold prompt), ``ai`` (an AI labeler) and ``arena`` (a blind arena vote). They fall into three groups:

- **human**: ``human``, ``simulated``, ``imported``, ``gold`` — preferences stated by people;
- **ai**: ``ai`` — RLAIF labels;
- **arena**: ``arena`` — checkpoint comparisons, never included unless asked for.

A ``SourceSelection`` is the explicit choice a researcher makes per export and per run:

========== =========================================================================
choice      rankings included
========== =========================================================================
human       the human group (the default everywhere)
ai          the AI group only
both        human + AI, every pair at its stored weight
weighted    human + AI, each AI pair's weight multiplied by ``ai_weight`` (default 0.5)
arena       arena votes only
========== =========================================================================

``include_arena=True`` adds arena votes to any choice. Quality figures always use the human group.
"""
from __future__ import annotations

from dataclasses import dataclass

from annotation.errors import InvalidInput

HUMAN_SOURCES = ("gold", "human", "imported", "simulated")
AI_SOURCES = ("ai",)
ARENA_SOURCES = ("arena",)
CHOICES = ("human", "ai", "both", "weighted", "arena")
DEFAULT_CHOICE = "human"
DEFAULT_AI_WEIGHT = 0.5
_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")  # include_arena as a query string
_GROUPS = {
    "human": HUMAN_SOURCES, "ai": AI_SOURCES, "both": HUMAN_SOURCES + AI_SOURCES,
    "weighted": HUMAN_SOURCES + AI_SOURCES, "arena": ARENA_SOURCES,
}
CHOICE_LABELS = {
    "human": "Human only (human, simulated, imported, gold-prompt rankings)",
    "ai": "AI labelers only",
    "both": "Human + AI",
    "weighted": "Human + AI, AI pairs down-weighted",
    "arena": "Arena votes only",
}


@dataclass(frozen=True)
class SourceSelection:
    choice: str = DEFAULT_CHOICE
    include_arena: bool = False
    ai_weight: float | None = None  # only for "weighted"

    @property
    def sources(self) -> tuple[str, ...]:
        """The ``Ranking.source`` values included, sorted."""
        extra = ARENA_SOURCES if self.include_arena else ()
        return tuple(sorted(set(_GROUPS[self.choice]) | set(extra)))

    def weight_factor(self, source: str) -> float:
        """What a pair's stored weight is multiplied by: ``ai_weight`` for AI pairs under "weighted", else 1."""
        return self.ai_weight if self.choice == "weighted" and source in AI_SOURCES else 1.0

    def describe(self) -> dict:
        """JSON-ready metadata: the choice, the sources it includes and the AI weight (None unless weighted)."""
        return {"sources": self.choice, "included_sources": list(self.sources), "ai_weight": self.ai_weight,
                "include_arena": self.include_arena}

    def label(self) -> str:
        """One line for people, e.g. ``weighted (ai ×0.5, gold, human, imported, simulated)``."""
        parts = [f"ai ×{self.ai_weight:g}" if s in AI_SOURCES and self.choice == "weighted" else s
                 for s in self.sources]
        return f"{self.choice} ({', '.join(parts)})"


def source_selection_parse(*, choice: object = None, include_arena: object = False,
                           ai_weight: object = None) -> SourceSelection:
    """Check untrusted input and return the selection; ``choice`` None or "" is the default (human).

    Raises ``InvalidInput`` naming the field: ``sources``, ``include_arena`` or ``ai_weight``.
    """
    if choice is None or choice == "":
        choice = DEFAULT_CHOICE
    if not isinstance(choice, str) or choice not in CHOICES:
        raise InvalidInput(f"unknown source choice {str(choice)[:40]!r}; choose one of {', '.join(CHOICES)}",
                           location="sources")
    if include_arena in (None, ""):
        include_arena = False
    if isinstance(include_arena, str) and include_arena.lower() in _TRUE + _FALSE:
        include_arena = include_arena.lower() in _TRUE
    if not isinstance(include_arena, bool):
        raise InvalidInput(f"include_arena must be true or false, got {str(include_arena)[:40]!r}",
                           location="include_arena")
    if choice != "weighted":
        if ai_weight not in (None, ""):
            raise InvalidInput("ai_weight applies only to the source choice 'weighted'", location="ai_weight")
        return SourceSelection(choice=choice, include_arena=include_arena)
    if ai_weight in (None, ""):
        ai_weight = DEFAULT_AI_WEIGHT
    if isinstance(ai_weight, str):
        try:
            ai_weight = float(ai_weight)
        except ValueError:
            raise InvalidInput(f"ai_weight must be a number, got {ai_weight[:40]!r}", location="ai_weight") from None
    if isinstance(ai_weight, bool) or not isinstance(ai_weight, (int, float)) or not 0 < ai_weight <= 1:
        raise InvalidInput(f"ai_weight must be a number in (0, 1], got {str(ai_weight)[:40]!r}", location="ai_weight")
    return SourceSelection(choice=choice, include_arena=include_arena, ai_weight=float(ai_weight))


HUMAN_ONLY = SourceSelection()
