"""Arena: blind side-by-side votes between two checkpoints, and a Bradley-Terry leaderboard with bootstrap CIs.

Services (writes, one transaction each): ``arena_create``, ``arena_responses_write``, ``arena_generate``
(and ``arena_generate_by_id``, which the Celery task ``lab.tasks.generate_arena`` runs on the ``gpu``
queue: ``arena_create`` enqueues it on commit for an arena without responses), ``arena_vote``, ``arena_close``. Selectors (reads): ``arena_get_for_user``, ``arena_list_for_user``,
``arena_pair_next_for_voter``, ``arena_shown_order``, ``arena_leaderboard``. Pure: ``leaderboard_from_votes``.

Blindness: voters never see model names (the page says "Arena #id"), the two samples of a prompt get their
positions (and so their ids' order) at random, and the left/right order is drawn per (voter, pair) from an
HMAC keyed by SECRET_KEY: stable across reloads, unpredictable to the voter.

Every vote is also a Ranking of its K=2 prompt through ``ranking_record``: A or B better gives tiers
``[[winner], [loser]]`` (one training pair), a tie gives ``[[left, right]]`` (no pair), and "both bad" is
stored as that same tie, flagged by ``ArenaVote.outcome == "both_bad"`` (no RankingEntry flag means
"bad", and neither response should be learnt from).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import random
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.db.models import Max
from django.http import Http404

from lab.models import Arena, ArenaPair, ArenaVote
from annotation.errors import InvalidInput, NotAllowed
from annotation.models import Project, Prompt, Ranking, Round, Sample
from annotation.quality import bradley_terry
from annotation.selectors import project_get_for_user, user_can_manage, user_role
from annotation.services import MAX_TIME_SPENT_MS, ranking_record

logger = logging.getLogger(__name__)

CHOICES = ("left", "right", "tie", "both_bad")
SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens", "seed", "batch_size")
MAX_PROMPTS = 5_000
MAX_RESPONSE_CHARS = 50_000
ELO_SCALE = 400 / math.log(10)  # rating = 1000 + ELO_SCALE · log-strength: a 400-point gap is 10:1 odds


# ----------------------------------------------------------------------------- leaderboard (pure)
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


# ----------------------------------------------------------------------------- selectors
def arena_list_for_user(*, user, project: Project):
    """The project's arenas for any member (voters are shown ids only); none for non-members."""
    if user_role(user=user, project=project) is None:
        return Arena.objects.none()
    return Arena.objects.filter(project=project).select_related("model_a", "model_b")


def arena_get_for_user(*, user, slug: str, arena_id: int) -> Arena:
    """The arena if the user is a member of its project; Http404 otherwise (never reveals existence)."""
    project = project_get_for_user(user=user, slug=slug)
    arena = arena_list_for_user(user=user, project=project).filter(pk=arena_id).first()
    if arena is None:
        raise Http404("No such arena.")
    return arena


def arena_shown_order(*, pair: ArenaPair, voter) -> list[int]:
    """[left sample id, right sample id] for this voter: an HMAC coin flip, stable per (voter, pair)."""
    digest = hmac.new(settings.SECRET_KEY.encode(), f"arena:{pair.pk}:{voter.pk}".encode(), hashlib.sha256).digest()
    ids = sorted([pair.sample_a_id, pair.sample_b_id])
    return ids if digest[0] & 1 else ids[::-1]


def arena_pair_next_for_voter(*, arena: Arena, voter) -> ArenaPair | None:
    """A pair of the open arena this voter has not voted on (in a per-voter order), or None."""
    if arena.status != Arena.Status.OPEN:
        return None
    pending = list(arena.pairs.exclude(votes__voter=voter).values_list("pk", flat=True))
    if not pending:
        return None
    key = lambda pk: hmac.new(settings.SECRET_KEY.encode(), f"arena-order:{voter.pk}:{pk}".encode(),  # noqa: E731
                              hashlib.sha256).digest()
    return ArenaPair.objects.select_related("prompt").get(pk=min(pending, key=key))


def arena_progress_for_voter(*, arena: Arena, voter) -> dict:
    total = arena.pairs.count()
    done = ArenaVote.objects.filter(pair__arena=arena, voter=voter).count()
    return {"done": done, "total": total, "left": total - done}


def arena_votes_for_project(*, project: Project) -> list[tuple]:
    """Every counted vote as ``(model_a id, model_b id, outcome)``; votes whose ranking a researcher excluded
    (quality control) do not count."""
    return list(
        ArenaVote.objects.filter(pair__arena__project=project, ranking__exclusion__isnull=True)
        .values_list("pair__arena__model_a_id", "pair__arena__model_b_id", "outcome")
    )


def arena_leaderboard(*, project: Project, resamples: int = 200, seed: int = 0, confidence: float = 0.95) -> dict:
    """The project's leaderboard: one row per compared checkpoint, with its name and kind."""
    from training.models import ModelArtifact

    if not 1 <= resamples <= 10_000:
        raise InvalidInput("resamples must be between 1 and 10000", location="resamples")
    if not 0.5 <= confidence < 1:
        raise InvalidInput("confidence must be in [0.5, 1)", location="confidence")
    votes = arena_votes_for_project(project=project)
    rows = leaderboard_from_votes(votes, resamples=resamples, seed=seed, confidence=confidence)
    artifacts = ModelArtifact.objects.in_bulk([r["model"] for r in rows])
    for row in rows:
        artifact = artifacts[row["model"]]
        row.update(model_id=row.pop("model"), name=artifact.name, kind=artifact.kind)
    return {"votes": len(votes), "resamples": resamples, "seed": seed, "confidence": confidence, "rows": rows}


# ----------------------------------------------------------------------------- services
GENERATOR_ARCHITECTURE_SUFFIXES = ("ForCausalLM", "LMHeadModel", "ForConditionalGeneration")


def artifact_can_generate(artifact) -> bool:
    """Whether a model artifact can write responses: a policy, or a base model whose ``config.json`` names a
    causal-LM architecture. Reward models (and base models for them, e.g. ``tiny-reward-model``) cannot."""
    from training.models import ModelArtifact
    from training.services import artifact_abs_path

    if artifact.kind == ModelArtifact.Kind.POLICY:
        return True
    if artifact.kind != ModelArtifact.Kind.BASE:
        return False
    try:
        config = json.loads((Path(artifact_abs_path(artifact=artifact)) / "config.json").read_text())
    except (OSError, ValueError):
        return False
    names = config.get("architectures") if isinstance(config, dict) else None
    return isinstance(names, list) and any(str(n).endswith(GENERATOR_ARCHITECTURE_SUFFIXES) for n in names)


def arena_generators(*, project: Project) -> list:
    """The project's artifacts that an arena may compare (policies and causal-LM bases), newest first."""
    from training.models import ModelArtifact

    artifacts = ModelArtifact.objects.filter(project=project, kind__in=[ModelArtifact.Kind.POLICY,
                                                                        ModelArtifact.Kind.BASE])
    return [a for a in artifacts.order_by("-created_at", "-id") if artifact_can_generate(a)]


def _check_models(*, project: Project, model_a, model_b) -> None:
    for where, artifact in (("model_a", model_a), ("model_b", model_b)):
        if artifact is None or artifact.project_id != project.pk or not artifact_can_generate(artifact):
            raise InvalidInput("choose a policy (or base causal LM) of this project; a reward model cannot "
                               "generate responses", location=where)
    if model_a.pk == model_b.pk:
        raise InvalidInput("an arena compares two different checkpoints", location="model_b")


def _check_items(items: object) -> tuple[list[list[dict]], list[tuple[str, str]] | None]:
    """Prompts, and (response_a, response_b) per prompt when every item gives both (else None)."""
    from training.policy_data import messages_parse

    if not isinstance(items, list) or not items:
        raise InvalidInput("give at least one prompt", location="items")
    if len(items) > MAX_PROMPTS:
        raise InvalidInput(f"at most {MAX_PROMPTS} prompts per arena, got {len(items)}", location="items")
    prompts, responses = [], []
    for i, item in enumerate(items):
        if isinstance(item, str):
            item = {"prompt": item}
        if not isinstance(item, dict):
            raise InvalidInput("each item must be an object or a prompt string", location=f"items[{i}]")
        unknown = sorted(set(item) - {"prompt", "messages", "response_a", "response_b"})
        if unknown:
            raise InvalidInput(f"unknown field {unknown[0]!r}", location=f"items[{i}].{unknown[0]}")
        prompts.append(messages_parse({k: v for k, v in item.items() if k in ("prompt", "messages")},
                                      where=f"items[{i}]"))
        texts = [item.get("response_a"), item.get("response_b")]
        if any(t is not None for t in texts):
            for side, text in zip("ab", texts):
                _check_response(text, location=f"items[{i}].response_{side}")
            responses.append((texts[0], texts[1]))
    if responses and len(responses) != len(prompts):
        raise InvalidInput("give response_a and response_b for every item, or for none (to generate them)",
                           location="items")
    return prompts, (responses or None)


def _check_response(text: object, *, location: str) -> str:
    if not isinstance(text, str) or not text.strip():
        raise InvalidInput("must be a non-empty string", location=location)
    if len(text) > MAX_RESPONSE_CHARS or "\x00" in text:
        raise InvalidInput(f"must be at most {MAX_RESPONSE_CHARS} characters without NUL bytes", location=location)
    return text


def sampling_validate(sampling: object) -> dict:
    """Sampling settings checked against their bounds, with defaults for the missing ones."""
    sampling = dict(sampling or {})
    unknown = sorted(set(sampling) - set(SAMPLING_KEYS))
    if unknown:
        raise InvalidInput(f"unknown sampling setting {unknown[0]!r} (known: {', '.join(SAMPLING_KEYS)})",
                           location=f"sampling.{unknown[0]}")
    bounds = {"temperature": (0.0, 5.0), "top_p": (0.01, 1.0), "max_new_tokens": (1, 4096), "seed": (0, 2**31 - 1),
              "batch_size": (1, 512)}
    for key, value in sampling.items():
        low, high = bounds[key]
        integer = isinstance(low, int)
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) or not (
                low <= value <= high):
            raise InvalidInput(f"must be {'a whole number' if integer else 'a number'} in [{low}, {high}]",
                               location=f"sampling.{key}")
    return {"temperature": 1.0, "top_p": 1.0, "max_new_tokens": 64, "seed": 0, "batch_size": 16, **sampling}


def arena_create(*, project: Project, model_a, model_b, name: str, items: list, sampling: dict | None = None,
                 user=None) -> Arena:
    """A new arena round with its prompts. ``items``: ``{"prompt"|"messages", ["response_a", "response_b"]}``;
    with responses it opens at once, without them it waits (GENERATING) for ``arena_generate``, which a ``gpu``
    worker runs once this transaction commits. Researchers and admins only; nothing is written on bad input."""
    if user is not None and not user_can_manage(user=user, project=project):
        raise NotAllowed("Only researchers and admins of this project can create an arena.")
    name = (name or "").strip()
    if not name or len(name) > 200:
        raise InvalidInput("give a name of 1 to 200 characters", location="name")
    _check_models(project=project, model_a=model_a, model_b=model_b)
    prompts, responses = _check_items(items)
    sampling = sampling_validate(sampling)
    with transaction.atomic():
        Project.objects.select_for_update().get(pk=project.pk)  # one new round number at a time
        number = (project.rounds.aggregate(n=Max("number"))["n"] or 0) + 1
        rnd = Round.objects.create(project=project, number=number, status=Round.Status.CLOSED, source="arena")
        arena = Arena.objects.create(project=project, name=name, model_a=model_a, model_b=model_b, round=rnd,
                                     sampling_params=sampling, created_by=user)
        Round.objects.filter(pk=rnd.pk).update(source=f"arena #{arena.pk}")  # no model names: voters may see it
        Prompt.objects.bulk_create([Prompt(project=project, round=rnd, messages=m) for m in prompts])
        if responses is not None:
            arena_responses_write(arena=arena, responses=responses)
        else:
            _enqueue_generation_on_commit(arena.pk)
    arena.refresh_from_db()
    return arena


_generation_enqueuers: list[Callable[[int], None]] = []


def arena_generation_enqueuer_register(enqueue: Callable[[int], None]) -> None:
    """How an arena's generation reaches a worker: ``lab.tasks.arena_generation_enqueue``, registered in
    ``LabConfig.ready`` (so this module does not import the task that calls it)."""
    _generation_enqueuers[:] = [enqueue]


def _enqueue_generation_on_commit(arena_id: int) -> None:
    if not _generation_enqueuers:
        raise RuntimeError("no arena generation enqueuer registered: lab.apps.LabConfig.ready registers it")
    enqueue = _generation_enqueuers[0]
    # robust: with the broker down the arena still exists; ``manage.py arena generate`` fills it by hand.
    transaction.on_commit(lambda: enqueue(arena_id), robust=True)


def arena_responses_write(*, arena: Arena, responses: Sequence[tuple[str, str]]) -> Arena:
    """One sample per model for each of the arena's prompts (in prompt id order), then status OPEN.

    Sample positions are drawn at random so that neither position nor id order reveals the model. A prompt
    whose two responses are identical cannot be voted on: it is removed and counted in ``summary``.
    Idempotent: an arena that is no longer GENERATING is returned unchanged.
    """
    with transaction.atomic():
        arena = Arena.objects.select_for_update().select_related("model_a", "model_b").get(pk=arena.pk)
        if arena.status != Arena.Status.GENERATING:
            return arena
        prompts = list(Prompt.objects.filter(round=arena.round_id).order_by("id"))
        if len(prompts) != len(responses):
            raise InvalidInput(f"expected {len(prompts)} response pairs, got {len(responses)}", location="responses")
        coin, identical = random.SystemRandom(), []
        for i, (prompt, texts) in enumerate(zip(prompts, responses)):
            texts = [_check_response(t, location=f"responses[{i}].{side}") for t, side in zip(texts, "ab")]
            if texts[0] == texts[1]:
                identical.append(prompt.pk)
                continue
            positions = coin.sample([0, 1], 2)
            samples = {}
            for side, text, artifact, position in zip("ab", texts, (arena.model_a, arena.model_b), positions):
                samples[side] = Sample(prompt=prompt, text=text, text_sha256=hashlib.sha256(text.encode()).hexdigest(),
                                       position=position, model_name=artifact.name[:200])
            for sample in sorted(samples.values(), key=lambda s: s.position):  # ids follow the random positions
                sample.save()
            ArenaPair.objects.create(arena=arena, prompt=prompt, sample_a=samples["a"], sample_b=samples["b"])
        Prompt.objects.filter(pk__in=identical).delete()
        arena.status = Arena.Status.OPEN
        arena.summary = {"pairs": len(prompts) - len(identical), "dropped_identical": len(identical)}
        if len(identical) == len(prompts):  # nothing to vote on: end with the reason, never "open" and empty
            arena.status = Arena.Status.CLOSED
            arena.summary["error"] = (f"the two checkpoints wrote identical responses to all {len(prompts)} prompts, "
                                      "so there is nothing to vote on; compare other checkpoints or sample with "
                                      "another seed or temperature")
        arena.save(update_fields=["status", "summary"])
    return arena


def arena_generate(*, arena: Arena, log=print) -> Arena:
    """Generate one response per prompt from each checkpoint (in this process; tiny models run on a CPU),
    then write them with ``arena_responses_write``. Torch is imported here only."""
    from training.ml.generation import generate_samples, load_policy
    from training.services import artifact_abs_path

    if arena.status != Arena.Status.GENERATING:
        return arena
    prompts = [p.messages for p in Prompt.objects.filter(round=arena.round_id).order_by("id")]
    params, texts = arena.sampling_params, []
    for artifact in (arena.model_a, arena.model_b):
        path = artifact_abs_path(artifact=artifact)
        base, adapter = (artifact.base_model, path) if artifact.is_adapter else (path, None)
        log(f"generating {len(prompts)} responses from {artifact.name} (#{artifact.pk})")
        model, tokenizer = load_policy(base, adapter)
        groups = generate_samples(
            str(base), prompts, k=1, temperature=params["temperature"], top_p=params["top_p"],
            max_new_tokens=params["max_new_tokens"], seed=params["seed"], batch_size=params["batch_size"],
            model=model, tokenizer=tokenizer,
        )
        texts.append([_generated_text(group[0].text) for group in groups])
    return arena_responses_write(arena=arena, responses=list(zip(texts[0], texts[1])))


def arena_generate_by_id(*, arena_id: int) -> str:
    """The task's service: generate the arena's responses unless it has them already. A failure is recorded in
    the arena's ``summary["error"]`` (shown to researchers; ``manage.py arena generate`` retries) and re-raised."""
    arena = Arena.objects.select_related("model_a", "model_b").filter(pk=arena_id).first()
    if arena is None:
        return f"no arena {arena_id}"
    if arena.status != Arena.Status.GENERATING:
        return f"arena {arena_id} is already {arena.status}"
    try:
        arena = arena_generate(arena=arena, log=lambda message: logger.info("arena %s: %s", arena_id, message))
    except Exception as error:
        message = f"{type(error).__name__}: {error}"[:2000]
        Arena.objects.filter(pk=arena_id, status=Arena.Status.GENERATING).update(summary={"error": message})
        raise
    return f"arena {arena_id} is {arena.status}: {arena.summary}"


def _generated_text(text: str) -> str:
    """Model output as storable text: NUL bytes removed (PostgreSQL text cannot hold them; byte-level tiny
    models do emit them), cut at MAX_RESPONSE_CHARS, and a visible marker when nothing is left."""
    text = text.replace("\x00", "")[:MAX_RESPONSE_CHARS]
    return text if text.strip() else "(empty response)"


def _tiers_for(choice: str, *, left: int, right: int) -> list[list[int]]:
    return {"left": [[left], [right]], "right": [[right], [left]]}.get(choice, [[left, right]])


def arena_vote(*, pair_id: int, voter, choice: str, left_sample_id: int, time_spent_ms: int = 0) -> ArenaVote:
    """Record a voter's verdict on a pair and, in the same transaction, its Ranking (and pair, if any).

    ``choice``: left / right / tie / both_bad; ``left_sample_id`` must be the response this voter was shown
    on the left. Idempotent: the same vote again returns the stored one; a different one is rejected.
    """
    if choice not in CHOICES:
        raise InvalidInput(f"choice must be one of {', '.join(CHOICES)}, got {str(choice)[:40]!r}", location="choice")
    if isinstance(time_spent_ms, bool) or not isinstance(time_spent_ms, int) or not (
            0 <= time_spent_ms <= MAX_TIME_SPENT_MS):
        raise InvalidInput("time spent must be a whole number of milliseconds", location="time_spent_ms")
    with transaction.atomic():
        pair = ArenaPair.objects.select_for_update().select_related("arena", "prompt").filter(pk=pair_id).first()
        if pair is None or user_role(user=voter, project=pair.arena.project) is None:
            raise NotAllowed("no such arena pair in your projects")
        left, right = arena_shown_order(pair=pair, voter=voter)
        if left_sample_id != left:
            raise InvalidInput("this is not the response you were shown on the left; reload the page",
                               location="left")
        outcome = {"left": _side(pair, left), "right": _side(pair, right)}.get(choice, choice)
        existing = ArenaVote.objects.filter(pair=pair, voter=voter).first()
        if existing is not None:
            if existing.outcome != outcome:
                raise InvalidInput("you already voted on this pair with a different verdict", location="choice")
            return existing
        if pair.arena.status != Arena.Status.OPEN:
            raise InvalidInput("this arena is closed for votes", location="arena")
        ranking = ranking_record(
            prompt=pair.prompt, labeler=voter, tiers=_tiers_for(choice, left=left, right=right),
            source=Ranking.Source.ARENA, time_spent_ms=time_spent_ms, shown_order=[left, right],
        )
        return ArenaVote.objects.create(pair=pair, voter=voter, outcome=outcome, left_sample_id=left,
                                        ranking=ranking, time_spent_ms=time_spent_ms)


def _side(pair: ArenaPair, sample_id: int) -> str:
    return ArenaVote.Outcome.A if sample_id == pair.sample_a_id else ArenaVote.Outcome.B


def arena_close(*, arena: Arena, user, reopen: bool = False) -> Arena:
    """Close an open arena to new votes (or reopen it); its votes stay. Researchers and admins only."""
    if not user_can_manage(user=user, project=arena.project):
        raise NotAllowed("Only researchers and admins of this project can close an arena.")
    with transaction.atomic():
        arena = Arena.objects.select_for_update().get(pk=arena.pk)
        target, allowed = ((Arena.Status.OPEN, Arena.Status.CLOSED) if reopen
                           else (Arena.Status.CLOSED, Arena.Status.OPEN))
        if reopen and arena.status == allowed and not arena.pairs.exists():
            raise InvalidInput("this arena has no pairs to vote on; create a new one", location="arena")
        if arena.status == allowed:
            arena.status = target
            arena.save(update_fields=["status"])
        elif arena.status != target:
            raise InvalidInput("the arena is still waiting for its responses", location="arena")
    return arena

