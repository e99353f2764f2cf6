"""The demo task: short story continuations that a tiny policy can learn to write better on a CPU.

A prompt asks to continue a story about one noun ("Continue the story about the harbor."). A response is
one to three clauses ``the <adjective> <noun> <verb>`` joined by ``and`` and ended by a full stop:

    "the warm harbor glowed and the bleak tower slept."

``demo_utility`` (the labelers' scoring function, pluggable as ``training.ml.demo_task:demo_utility``) is
documented and deterministic:

* a response that does not follow that grammar (unknown word, missing full stop, more than three clauses,
  empty) scores −1;
* otherwise utility = mood + topic, where mood is the mean over clauses of +1 for a *bright* adjective and
  −1 for a *dark* one (so mood ∈ [−1, 1]), and topic is +0.5 when some clause's noun is the prompt's noun.

The demonstrations (the SFT corpus) draw bright and dark adjectives equally often and use the prompt's
noun in the first clause only 30% of the time, so the SFT policy is imperfect (mean utility ≈ 0.2) and
preferences can improve it without collapsing it: bright and dark adjectives are equally likely under the
SFT policy, so moving towards bright ones costs no likelihood under it.

Pure Python; no Django. The corpus and prompt pool are generated deterministically and stored in
``training/ml/demo_data/`` (``python -m training.ml.demo_task`` rewrites them).
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent / "demo_data"
BRIGHT = ("sunny", "warm", "kind", "bright", "gentle", "happy", "calm", "golden", "sweet", "lively", "clear", "brave")
DARK = ("cold", "grim", "dull", "gloomy", "bitter", "harsh", "bleak", "damp", "weary", "stale", "murky", "sour")
NOUNS = ("river", "road", "house", "window", "garden", "market", "bridge", "field",
         "tower", "harbor", "forest", "village", "street", "meadow", "hill", "boat")
VERBS = ("waited", "shone", "turned", "rested", "opened", "moved", "stood", "changed",
         "glowed", "faded", "grew", "slept")
MAX_CLAUSES = 3
TOPIC_BONUS = 0.5
MALFORMED = -1.0
SFT_TOPIC_RATE = 0.3  # how often a demonstration's first clause uses the prompt's noun
_PROMPT_RE = re.compile(r"Continue the story about the (\w+)\.")


def demo_prompt(noun: str) -> list[dict]:
    return [{"role": "user", "content": f"Continue the story about the {noun}."}]


def prompt_noun(prompt_messages: list[dict]) -> str | None:
    """The noun the last user message asks about (the topic), or None when it is not a demo prompt."""
    for message in reversed(prompt_messages):
        if message.get("role") == "user":
            match = _PROMPT_RE.search(str(message.get("content", "")))
            return match.group(1) if match else None
    return None


def parse_response(text: str) -> list[tuple[str, str, str]] | None:
    """The (adjective, noun, verb) clauses of a well-formed response, or None if it is malformed."""
    text = text.strip()
    if not text.endswith(".") or text.count(".") != 1:
        return None
    clauses = text[:-1].strip().split(" and ")
    if not 1 <= len(clauses) <= MAX_CLAUSES:
        return None
    parsed = []
    for clause in clauses:
        words = clause.split()
        if len(words) != 4 or words[0] != "the":
            return None
        _, adjective, noun, verb = words
        if adjective not in BRIGHT + DARK or noun not in NOUNS or verb not in VERBS:
            return None
        parsed.append((adjective, noun, verb))
    return parsed


def demo_grammar_check(prompt_messages: list[dict], response_text: str) -> bool:
    """A task check for the health gate (``training.ml.health``): the reply follows the demo grammar."""
    return parse_response(response_text) is not None


def demo_utility(prompt_messages: list[dict], response_text: str) -> float:
    """Mood of the response's adjectives plus a bonus for staying on the prompt's topic; −1 if malformed."""
    clauses = parse_response(response_text)
    if clauses is None:
        return MALFORMED
    mood = sum(1.0 if adjective in BRIGHT else -1.0 for adjective, _, _ in clauses) / len(clauses)
    topic = TOPIC_BONUS if prompt_noun(prompt_messages) in {noun for _, noun, _ in clauses} else 0.0
    return mood + topic


def demonstration_text(rng: random.Random, topic: str, topic_rate: float = SFT_TOPIC_RATE) -> str:
    """One SFT demonstration: 1-3 clauses, the first on ``topic`` with probability ``topic_rate``."""
    clauses = []
    for i in range(rng.choice((1, 2, 2, 3))):
        noun = topic if i == 0 and rng.random() < topic_rate else rng.choice(NOUNS)
        adjective = rng.choice(BRIGHT + DARK)  # bright and dark equally likely: the SFT policy is mood-neutral
        clauses.append(f"the {adjective} {noun} {rng.choice(VERBS)}")
    return " and ".join(clauses) + "."


def make_demonstrations(n: int, *, seed: int = 0) -> list[tuple[list[dict], str]]:
    """``n`` (prompt messages, response) pairs for SFT, deterministic in ``seed``."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        topic = rng.choice(NOUNS)
        out.append((demo_prompt(topic), demonstration_text(rng, topic)))
    return out


def make_prompt_pool(*, repeats: int = 16) -> list[list[dict]]:
    """Every topic ``repeats`` times: the pool each round samples its prompts from."""
    return [demo_prompt(noun) for _ in range(repeats) for noun in NOUNS]


def write_demo_data(data_dir: Path = DATA_DIR, *, n_demonstrations: int = 4000, seed: int = 0) -> None:
    """Write demonstrations.jsonl and prompts.jsonl (the files the SFT run and the loop import)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with open(data_dir / "demonstrations.jsonl", "w", encoding="utf-8") as f:
        for messages, response in make_demonstrations(n_demonstrations, seed=seed):
            f.write(json.dumps({"messages": messages, "response": response}) + "\n")
    with open(data_dir / "prompts.jsonl", "w", encoding="utf-8") as f:
        for noun in NOUNS:
            f.write(json.dumps({"messages": demo_prompt(noun)}) + "\n")


def load_demonstrations(data_dir: Path = DATA_DIR) -> list[tuple[list[dict], str]]:
    with open(data_dir / "demonstrations.jsonl", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [(row["messages"], row["response"]) for row in rows]


def load_prompts(data_dir: Path = DATA_DIR) -> list[list[dict]]:
    with open(data_dir / "prompts.jsonl", encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


def tokenizer_texts() -> list[str]:
    """Every word the task uses, in context, so a tiny BPE learns one token per word."""
    words = " ".join(BRIGHT + DARK + NOUNS + VERBS)
    prompts = [m["content"] for p in make_prompt_pool(repeats=1) for m in p]
    return [words, *prompts, *(response for _, response in make_demonstrations(500, seed=1))]


def build_demo_base(out_dir: str | Path, *, seed: int = 0, hidden: int = 64, layers: int = 2, heads: int = 4,
                    initializer_range: float | None = None) -> Path:
    """Build the demo's tokenizer and a randomly initialised tiny causal LM in ``out_dir``; return it.
    ``initializer_range``: the weights' std (default ``hidden ** -0.5``, see ``tiny_models.build_tiny_causal_lm``)."""
    from training.ml.tiny_models import build_tiny_causal_lm, build_tokenizer

    tokenizer = build_tokenizer(tokenizer_texts(), Path(out_dir) / "tokenizer", vocab_size=512)
    return build_tiny_causal_lm(Path(out_dir) / "base", tokenizer, hidden=hidden, layers=layers, heads=heads,
                                max_positions=128, seed=seed, initializer_range=initializer_range)


if __name__ == "__main__":
    write_demo_data()
    print(f"wrote {DATA_DIR}")
