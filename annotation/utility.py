"""Utility functions for scripted labelers: ``(prompt_messages, response_text) -> float``, higher is better.

Any importable function with that signature can stand in for a human's taste. Users pick one by name from the
operator's registry (``annotation.hooks``, kind ``utility``); the operator at the command line may also pass
``"package.module:function"`` to ``simulate_labelers --utility`` (resolved by ``load_utility``).
"""
import math
import re
from collections.abc import Callable

Utility = Callable[[list[dict], str], float]

_WORD = re.compile(r"[a-z0-9']+")
_STOPWORDS = frozenset(
    "a an and are as at be but by can do for from has have how i in is it me my of on or so that the this to "
    "was what when where which who why will with you your".split()
)
IDEAL_WORDS = (8, 150)  # responses in this length band get no length penalty


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def default_utility(prompt_messages: list[dict], response_text: str) -> float:
    """A simple, documented stand-in for a labeler's taste; deterministic, range about [-3, 1].

    score = relevance - length_penalty - repetition_penalty, where
    - relevance: the fraction of the content words (stopwords removed) of the last user message that
      the response uses, in [0, 1] (all messages if none is from the user);
    - length_penalty: 0 for 8 to 150 words, else |log2(words / nearest bound)| capped at 2, so an empty
      or one-word answer and a wall of text both lose;
    - repetition_penalty: 1 - distinct words / words, in [0, 1): "yes yes yes yes" loses 0.75.

        >>> default_utility([{"role": "user", "content": "Why is the sky blue?"}],
        ...                 "The sky looks blue because air scatters blue light more than red light.")
        0.8461538461538461

    (relevance 1.0: "sky" and "blue" both used; no length penalty; 2 of 13 words repeated.)
    """
    user_turns = [m.get("content", "") for m in prompt_messages if m.get("role") == "user"]
    prompt_text = user_turns[-1] if user_turns else " ".join(str(m.get("content", "")) for m in prompt_messages)
    prompt_words = {w for w in _words(str(prompt_text)) if w not in _STOPWORDS}
    words = _words(response_text)
    relevance = len(prompt_words & set(words)) / len(prompt_words) if prompt_words else 0.0
    low, high = IDEAL_WORDS
    n = len(words)
    if n < low:
        length_penalty = min(2.0, math.log2(low / max(n, 1)) + (1.0 if n == 0 else 0.0))
    elif n > high:
        length_penalty = min(2.0, math.log2(n / high))
    else:
        length_penalty = 0.0
    repetition_penalty = 1.0 - len(set(words)) / n if n else 0.0
    return relevance - length_penalty - repetition_penalty


def load_utility(spec: str) -> Utility:
    """The operator's command-line form (``simulate_labelers --utility``, ``run_loop``, ``compare_selection``): a
    registered utility name (``annotation.hooks``) or any ``"package.module:function"``. Never call it with a
    string a user typed in the browser or the API: those go through ``annotation.hooks.hook_check`` / ``hook_resolve``.
    """
    from annotation.hooks import hook_load_for_operator

    return hook_load_for_operator(spec, kind="utility", location="utility")
