"""A suite of simulated-labeler utilities for the demo task, of different shapes (issue 12): length,
presence and absence of words, mood, structure, the prompt's noun, mixtures, and one a collapsed policy wins.

Each is ``utility(prompt_messages, response_text) -> float`` like ``demo_task.demo_utility``; malformed
replies score ``demo_task.MALFORMED`` except in ``fewest_words`` (the collapse-winnable one: a policy that
emits "." beats every fluent reply, so the health gate must catch it). ``SET_ASIDE`` names the half kept out
of any tuning of the defaults (none was done on either half when docs/loop.md's suite figures were taken).
No Django here.
"""
from __future__ import annotations

from training.ml.demo_task import BRIGHT, DARK, MALFORMED, prompt_noun, parse_response


def two_clauses(prompt_messages: list[dict], response_text: str) -> float:
    """Length: exactly two clauses is best, −0.5 per clause away from two."""
    clauses = parse_response(response_text)
    return MALFORMED if clauses is None else -0.5 * abs(len(clauses) - 2)


def no_dark_words(prompt_messages: list[dict], response_text: str) -> float:
    """Absence of words: mean over clauses of −0.5 per dark adjective, +0.5 otherwise."""
    clauses = parse_response(response_text)
    if clauses is None:
        return MALFORMED
    return sum(-0.5 if adjective in DARK else 0.5 for adjective, _, _ in clauses) / len(clauses)


def says_glowed(prompt_messages: list[dict], response_text: str) -> float:
    """Presence of a word: +1 if a clause's verb is "glowed"."""
    clauses = parse_response(response_text)
    if clauses is None:
        return MALFORMED
    return 1.0 if any(verb == "glowed" for _, _, verb in clauses) else 0.0


def dark_mood(prompt_messages: list[dict], response_text: str) -> float:
    """Mood, the other way round from the demo's: mean over clauses of +1 per dark, −1 per bright adjective."""
    clauses = parse_response(response_text)
    if clauses is None:
        return MALFORMED
    return sum(1.0 if adjective in DARK else -1.0 for adjective, _, _ in clauses) / len(clauses)


def noun_first(prompt_messages: list[dict], response_text: str) -> float:
    """Structure and the prompt's noun: +1 if the first clause is about the prompt's noun, +0.5 if a later one is."""
    clauses = parse_response(response_text)
    if clauses is None:
        return MALFORMED
    nouns = [noun for _, noun, _ in clauses]
    topic = prompt_noun(prompt_messages)
    return 1.0 if nouns[0] == topic else 0.5 if topic in nouns else 0.0


def distinct_verbs(prompt_messages: list[dict], response_text: str) -> float:
    """Structure: three clauses whose verbs all differ score 1; fewer distinct verbs or clauses score less."""
    clauses = parse_response(response_text)
    if clauses is None:
        return MALFORMED
    return len({verb for _, _, verb in clauses}) / 3.0


def bright_and_long(prompt_messages: list[dict], response_text: str) -> float:
    """Mixture: half bright mood, plus a quarter per clause beyond two."""
    clauses = parse_response(response_text)
    if clauses is None:
        return MALFORMED
    mood = sum(1.0 if adjective in BRIGHT else -1.0 for adjective, _, _ in clauses) / len(clauses)
    return 0.5 * mood + 0.25 * (len(clauses) - 2)


def fewest_words(prompt_messages: list[dict], response_text: str) -> float:
    """Collapse-winnable: fewer words is better, whatever the grammar ("." scores 0, the best)."""
    return -0.25 * len(response_text.split())


SUITE = {f.__name__: f for f in (two_clauses, no_dark_words, says_glowed, dark_mood, noun_first, distinct_verbs,
                                 bright_and_long, fewest_words)}
SET_ASIDE = ("dark_mood", "noun_first", "distinct_verbs", "bright_and_long")  # kept out of tuning
COLLAPSE_WINNABLE = ("fewest_words",)  # exempt from the z target; the gate must stop its collapsed policies
