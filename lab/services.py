"""Arena: blind side-by-side votes between two checkpoints, and a Bradley-Terry leaderboard with bootstrap CIs.

Services (writes, one transaction each): ``arena_create``, ``arena_responses_write``, ``arena_generate``
(and ``arena_generate_by_id``, which the Celery task ``lab.tasks.generate_arena`` runs on the ``gpu``
queue: ``arena_create`` enqueues it on commit for an arena without responses), ``arena_vote``,
``arena_close``. The reads (``arena_get_for_user``, ``arena_pair_next_for_voter``, ``arena_shown_order``,
``arena_leaderboard``, ...) are in ``lab.selectors``; the leaderboard's arithmetic in ``lab.leaderboard``.

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
import logging
import random
from collections.abc import Callable, Sequence

from django.db import transaction
from django.db.models import Max

from annotation.errors import InvalidInput, NotAllowed
from annotation.models import Project, Prompt, Ranking, Round, Sample
from annotation.selectors import user_can_manage, user_role
from annotation.services import ranking_record, time_spent_check
from lab.models import Arena, ArenaPair, ArenaVote
from lab.selectors import arena_shown_order, artifact_can_generate

logger = logging.getLogger(__name__)

CHOICES = ("left", "right", "tie", "both_bad")
SAMPLING_KEYS = ("temperature", "top_p", "max_new_tokens", "seed", "batch_size")
MAX_PROMPTS = 5_000
MAX_RESPONSE_CHARS = 50_000


# ----------------------------------------------------------------------------- services
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
    from training.artifact_paths import artifact_base_model, artifact_dir

    if arena.status != Arena.Status.GENERATING:
        return arena
    prompts = [p.messages for p in Prompt.objects.filter(round=arena.round_id).order_by("id")]
    params, texts = arena.sampling_params, []
    for artifact in (arena.model_a, arena.model_b):
        path = artifact_dir(artifact=artifact)
        base, adapter = (artifact_base_model(artifact=artifact), path) if artifact.is_adapter else (path, None)
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
    time_spent_ms = time_spent_check(time_spent_ms)
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

