"""Writes of the annotation app: leasing prompts to labelers, recording rankings and their pairs.

Every function here is one transaction. Concurrency is handled with row locks on PostgreSQL (on SQLite,
which serialises writers, ``select_for_update`` is a no-op). Locks are always taken in the order
user → assignment → prompt, or the prompt is taken with ``SKIP LOCKED`` (never waiting), so no two
requests wait on each other in a cycle:
- leasing locks the labeler's user row (one lease request per labeler at a time), then candidate Prompt
  rows with ``SKIP LOCKED`` (two labelers never wait on or take the same slot), and recounts the
  prompt's slots after the lock, so ``overlap`` is never exceeded;
- submitting and skipping lock the user, then the Assignment row with its Prompt row in one statement,
  so a double submit writes once;
- ``ranking_record`` locks the Prompt row before checking for an existing ranking;
- ``assignment_expire_stale`` locks nothing it would have to wait for (``SKIP LOCKED``; the rest waits
  for its next run a minute later).

Every change to a prompt's leases also refreshes the prompt's slot columns (``slots_taken``,
``lease_expires_min``: ``prompt_slots_refresh``) under the same prompt lock; leasing filters on them
instead of counting every open prompt's leases (``selectors.prompt_lease_candidates``).

Expired leases: a lease past ``expires_at`` no longer holds a slot, whether or not the periodic
``assignment_expire_stale`` has marked it yet. Its labeler may still submit it as long as the slot is
free (nobody else took the last one meanwhile); otherwise the submit is rejected with a clear message.
"""
import random
import time
from datetime import datetime, timedelta

from collections.abc import Iterable

from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Count, Exists, IntegerField, Min, OuterRef, Subquery, Value
from django.db.models.functions import Coalesce
from django.utils import timezone

from annotation import ranking as ranking_rules
from annotation.errors import InvalidInput, LeaseLost, NotAllowed, RankingInvalid
from annotation.extensions import ranking_lock_reason
from annotation.models import AILabeler, Assignment, PairwiseComparison, Project, Prompt, Ranking, RankingEntry, Round
from annotation.selectors import (
    HUMAN_SLOT_Q,
    assignment_active_for_labeler,
    ranking_last_for_labeler,
    prompt_lease_candidates,
    prompt_live_slot_count,
    user_is_ai_labeler,
    user_role,
)
from annotation.quality.selectors import gold_turn_order
from preferences.tiers import pairs_from_tiers, tiers_normalize

MAX_TIME_SPENT_MS = 2**31 - 1  # PositiveIntegerField's bound on PostgreSQL
MAX_SKIP_REASON = 500
MAX_COMMENT = 1000  # Ranking.comment's max_length
WITHDRAWN_REASON = "Ranking withdrawn by the labeler"
_CANDIDATE_BATCH = 8  # rows locked per candidate query: few, so concurrent leasers skip few of them
_CANDIDATE_WINDOW = 64  # candidates read by index per query; the batch is locked among them, skipping locked ones
_HOLDING = (Assignment.Status.SUBMITTED, Assignment.Status.ACTIVE)
_LOCKED_WAIT_S = 2.0  # how long to wait for candidates that other labelers hold locked
_LOCKED_RETRY_S = 0.01
# A human's (or a simulated human's) ranking of a gold prompt is recorded with source "gold"; AI labelers'
# and arena rankings keep their own source.
_GOLD_WHEN_GOLD_PROMPT = (Ranking.Source.HUMAN, Ranking.Source.SIMULATED)


def shown_order_for(*, prompt: Prompt, labeler, sample_ids: list[int] | None = None) -> list[int]:
    """The prompt's sample ids shuffled by a RNG seeded from (labeler, prompt): stable per labeler,
    different across labelers, so position bias averages out over the overlap.

    ``sample_ids``: the prompt's sample ids in position order, when the caller has already read them."""
    if sample_ids is None:
        sample_ids = list(prompt.samples.order_by("position").values_list("pk", flat=True))
    sample_ids = list(sample_ids)
    random.Random(f"shown-order:{labeler.pk}:{prompt.pk}").shuffle(sample_ids)
    return sample_ids


def prompt_slots_refresh(*, prompt_ids: Iterable[int]) -> int:
    """Recompute the prompts' slot columns from their leases, in one UPDATE; returns how many prompts.

    ``slots_taken`` = humans' submitted + active leases (an active lease past its expiry still counts here; the
    selectors see it through ``lease_expires_min`` ≤ now), ``lease_expires_min`` = the earliest expiry
    of an active lease. The services call this under the prompts' row locks after every lease change;
    call it yourself after writing Assignment rows by other means (admin, data fixes).
    """
    human = Assignment.objects.filter(HUMAN_SLOT_Q, prompt=OuterRef("pk"))  # AI labelers take no human slot
    taken = (human.filter(status__in=_HOLDING).order_by().values("prompt")
             .annotate(n=Count("pk")).values("n"))
    first_expiry = (human.filter(status=Assignment.Status.ACTIVE).order_by()
                    .values("prompt").annotate(t=Min("expires_at")).values("t"))
    return Prompt.objects.filter(pk__in=list(prompt_ids)).update(
        slots_taken=Coalesce(Subquery(taken, output_field=IntegerField()), Value(0)),
        lease_expires_min=Subquery(first_expiry),
    )


def _lease(*, prompt: Prompt, labeler, now: datetime, lease_minutes: int, sample_ids: list[int]) -> Assignment:
    """Create the lease, or reuse this labeler's expired row for the prompt (one row per (prompt, labeler)).

    The caller holds the labeler's user lock (no concurrent lease of the same pair) and the prompt's lock.
    """
    values = {
        "status": Assignment.Status.ACTIVE,
        "shown_order": shown_order_for(prompt=prompt, labeler=labeler, sample_ids=sample_ids),
        "expires_at": now + timedelta(minutes=lease_minutes),
        "skip_reason": "",
        "finished_at": None,
    }
    if Assignment.objects.filter(prompt=prompt, labeler=labeler).update(**values):
        assignment = Assignment.objects.select_related("prompt", "prompt__project").get(prompt=prompt, labeler=labeler)
    else:
        assignment = Assignment.objects.create(prompt=prompt, labeler=labeler, **values)
    prompt_slots_refresh(prompt_ids=[prompt.pk])
    return assignment


def _lock_user(user) -> bool:
    """Lock the user's row; returns whether the user is an AI labeler (read in the same statement)."""
    rows = get_user_model().objects.select_for_update().filter(pk=user.pk)
    is_ai = Exists(AILabeler.objects.filter(user_id=OuterRef("pk")))
    return any(rows.annotate(is_ai=is_ai).values_list("is_ai", flat=True))


def assignment_next_for_labeler(*, project: Project, labeler, now: datetime | None = None) -> Assignment | None:
    """The labeler's current lease in the project, or a new one on a free slot; None when nothing is left.

    Raises NotAllowed if the user is not a member of the project (superusers are, as admins).
    """
    now = now or timezone.now()
    if user_role(user=labeler, project=project) is None:
        raise NotAllowed(f"{labeler} is not a member of project {project.slug}")
    with transaction.atomic():
        is_ai = _lock_user(labeler)  # serialise this labeler's own requests (two tabs): never two leases at once
        current = assignment_active_for_labeler(project=project, labeler=labeler, now=now)
        if current is not None:
            return current
        for gold in gold_turn_order(project=project, labeler=labeler):
            assignment = _lease_first_free(project=project, labeler=labeler, now=now, gold=gold, is_ai=is_ai)
            if assignment is not None:
                return assignment
        return None


def _lease_first_free(*, project: Project, labeler, now: datetime, gold: bool, is_ai: bool) -> Assignment | None:
    """Lease the first free candidate (gold prompts, or the others); None when there is none. An AI labeler
    (``is_ai``) ignores the overlap: it takes no human slot."""
    tried: list[int] = []
    deadline = time.monotonic() + _LOCKED_WAIT_S
    while True:
        available = prompt_lease_candidates(project=project, labeler=labeler, now=now, gold=gold, ai=is_ai,
                                            window=_CANDIDATE_WINDOW, exclude_ids=tried)
        candidates = list(
            available.select_related("project").select_for_update(skip_locked=True, of=("self",))[:_CANDIDATE_BATCH]
        )
        if not candidates:
            # Every candidate may be locked by other labelers' leasing right now; their transactions
            # last milliseconds and may leave a slot free for us (overlap > 1), so look again shortly
            # rather than answer "nothing left". A fresh statement sees what they committed.
            if not available.exists() or time.monotonic() > deadline:
                return None
            time.sleep(_LOCKED_RETRY_S)
            continue
        for prompt in candidates:
            # The candidate columns are a hint (and the query's snapshot may predate a lease committed just
            # before our lock): recount exactly. Gold prompts have no overlap limit, nor have AI labelers.
            if prompt.is_gold or is_ai or prompt_live_slot_count(prompt_id=prompt.pk, now=now) < project.overlap:
                sample_ids = list(prompt.samples.order_by("position").values_list("pk", flat=True))
                if len(sample_ids) >= 2:  # a prompt needs two responses to be ranked
                    return _lease(prompt=prompt, labeler=labeler, now=now, lease_minutes=project.lease_minutes,
                                  sample_ids=sample_ids)
            tried.append(prompt.pk)


def time_spent_check(time_spent_ms: object) -> int:
    """The milliseconds a labeler or voter spent, checked: a whole number in [0, MAX_TIME_SPENT_MS]."""
    if isinstance(time_spent_ms, bool) or not isinstance(time_spent_ms, int):
        raise RankingInvalid("time spent must be a whole number of milliseconds", location="time_spent_ms")
    if not 0 <= time_spent_ms <= MAX_TIME_SPENT_MS:
        raise RankingInvalid(f"time spent must be between 0 and {MAX_TIME_SPENT_MS} ms", location="time_spent_ms")
    return time_spent_ms


def _check_comment(comment: object) -> str:
    if not isinstance(comment, str):
        raise RankingInvalid("the comment must be text", location="comment")
    comment = comment.strip()
    if len(comment) > MAX_COMMENT:
        raise RankingInvalid(f"the comment is {len(comment)} characters; at most {MAX_COMMENT}", location="comment")
    return comment


def _check_all_bad(all_bad: object) -> bool:
    if not isinstance(all_bad, bool):
        raise RankingInvalid("all_bad must be true or false", location="all_bad")
    return all_bad


def _existing_ranking_or_reject(*, existing: Ranking, tiers: list[list[int]]) -> Ranking:
    """A repeat of the same ranking returns the stored one; a different ranking is rejected."""
    stored = ranking_tiers(ranking=existing)
    if tiers_normalize(stored) == tiers_normalize(tiers):
        return existing
    raise RankingInvalid("this prompt was already ranked (already submitted) with a different order", location="tiers")


def ranking_tiers(*, ranking: Ranking) -> list[list[int]]:
    """A stored ranking's tiers, best first, each tier in shown order."""
    tiers: dict[int, list[int]] = {}
    for tier, sample_id in ranking.entries.order_by("tier", "shown_position").values_list("tier", "sample_id"):
        tiers.setdefault(tier, []).append(sample_id)
    return [tiers[t] for t in sorted(tiers)]


def ranking_record(
    *,
    prompt: Prompt,
    labeler,
    tiers: list[list[int]],
    flags: dict[int, list[str]] | None = None,
    source: str,
    time_spent_ms: int = 0,
    shown_order: list[int] | None = None,
    assignment: Assignment | None = None,
) -> Ranking:
    """Write a Ranking, its K entries and its C(K,2)-minus-ties pairs: the writer of every
    ranking a labeler (or arena voter, or AI labeler) gives; ``annotation/importers.py`` bulk-writes imported rankings
    and their pairs itself.

    ``labeler`` may be None only for ``source="imported"``. Recording the same ranking again returns the
    stored one (idempotent); a different ranking of the same prompt by the same labeler is rejected.
    """
    _check_source(source=source, labeler=labeler)
    time_spent_ms = time_spent_check(time_spent_ms)
    with transaction.atomic():
        prompt = Prompt.objects.select_for_update().get(pk=prompt.pk)
        return _ranking_write(
            prompt=prompt, labeler=labeler, tiers=tiers, flags=flags, source=source, time_spent_ms=time_spent_ms,
            shown_order=shown_order, assignment=assignment,
        )


def _check_source(*, source: str, labeler) -> None:
    if source not in Ranking.Source.values:
        raise RankingInvalid(f"unknown source {str(source)[:40]!r}; expected one of {Ranking.Source.values}", location="source")
    if labeler is None and source != Ranking.Source.IMPORTED:
        raise RankingInvalid("a ranking without a labeler must have source 'imported'", location="labeler")


def _ranking_write(
    *, prompt: Prompt, labeler, tiers, flags, source: str, time_spent_ms: int, shown_order, assignment,
    comment: str = "", all_bad: bool = False,
) -> Ranking:
    """``ranking_record``'s writes, for a caller that holds the prompt's row lock in a transaction:
    validate against the prompt's samples, return an identical stored ranking, else insert the ranking,
    its entries and its pairs (three INSERTs)."""
    sample_ids = list(prompt.samples.order_by("position").values_list("pk", flat=True))
    clean_tiers = ranking_rules.tiers_validate(tiers=tiers, sample_ids=sample_ids)
    clean_flags = ranking_rules.flags_validate(flags=flags, sample_ids=sample_ids, allowed=RankingEntry.Flag.values)
    positions = ranking_rules.shown_positions(shown_order=shown_order, sample_ids=sample_ids)
    existing = Ranking.objects.filter(prompt=prompt, labeler=labeler).first()
    if existing is not None:
        return _existing_ranking_or_reject(existing=existing, tiers=clean_tiers)
    if prompt.is_gold and source in _GOLD_WHEN_GOLD_PROMPT:
        source = Ranking.Source.GOLD  # a person's answer to a gold prompt: an attention check, kept apart
    ranking = Ranking.objects.create(
        prompt=prompt, labeler=labeler, assignment=assignment, source=source, time_spent_ms=time_spent_ms,
        comment=comment, all_bad=all_bad,
    )
    _entries_and_pairs_write(ranking=ranking, tiers=clean_tiers, flags=clean_flags, positions=positions)
    return ranking


def _entries_and_pairs_write(*, ranking: Ranking, tiers, flags, positions, weight: float = 1.0) -> None:
    """A ranking's K entries and its pairs from validated tiers (two INSERTs)."""
    clean_tiers, clean_flags = tiers, flags
    RankingEntry.objects.bulk_create(
        RankingEntry(
            ranking=ranking, sample_id=sample_id, tier=tier,
            shown_position=positions[sample_id], flags=clean_flags.get(sample_id, []),
        )
        for tier, members in enumerate(clean_tiers)
        for sample_id in members
    )
    PairwiseComparison.objects.bulk_create(
        PairwiseComparison(ranking=ranking, prompt_id=ranking.prompt_id, chosen_id=chosen, rejected_id=rejected,
                           margin=margin, weight=weight)
        for chosen, rejected, margin in pairs_from_tiers(clean_tiers)
    )


def _locked_assignment_of(*, assignment_id: int, labeler, error: type[InvalidInput]) -> Assignment:
    """Lock and return the labeler's assignment with its prompt; someone else's or a missing one is an
    error (not revealed).

    The labeler's user row is locked first, as in ``assignment_next_for_labeler``, so one labeler's
    requests are serialised; then the Assignment and its Prompt row in one statement (user → assignment
    → prompt, the order of every waiting lock in this module).
    """
    if labeler is not None:
        _lock_user(labeler)
    assignment = (
        Assignment.objects.select_for_update(of=("self", "prompt"))
        .select_related("prompt", "prompt__project")
        .filter(pk=assignment_id)
        .first()
    )
    if assignment is None or labeler is None or assignment.labeler_id != labeler.pk:
        raise error("this task is not leased to you", location="assignment")
    return assignment


def _lease_slot_lost(*, assignment: Assignment, now: datetime) -> bool:
    """True when the lease expired and other leases now hold all of the prompt's slots (prompt locked)."""
    if assignment.status == Assignment.Status.ACTIVE and assignment.expires_at > now or assignment.prompt.is_gold:
        return False
    taken = prompt_live_slot_count(prompt_id=assignment.prompt_id, now=now, exclude_assignment_id=assignment.pk)
    return taken >= assignment.prompt.project.overlap


def _check_lease_submittable(*, assignment: Assignment, now: datetime) -> None:
    """Active leases may be submitted; so may an expired one whose slot is still free (prompt locked)."""
    if assignment.status == Assignment.Status.SKIPPED:
        raise RankingInvalid("you skipped this task; it can no longer be submitted", location="assignment")
    if assignment.status == Assignment.Status.ACTIVE and assignment.expires_at > now:
        return
    project = assignment.prompt.project
    taken = prompt_live_slot_count(prompt_id=assignment.prompt_id, now=now, exclude_assignment_id=assignment.pk)
    if taken >= project.overlap and not assignment.prompt.is_gold and not user_is_ai_labeler(user=assignment.labeler):
        raise RankingInvalid(
            "your lease expired and the task was given to another labeler; please take the next one",
            location="assignment",
        )


def ranking_submit(
    *,
    assignment_id: int,
    labeler,
    tiers: list[list[int]],
    flags: dict[int, list[str]] | None = None,
    time_spent_ms: int = 0,
    source: str = "human",
    comment: str = "",
    all_bad: bool = False,
    now: datetime | None = None,
) -> Ranking:
    """Submit the labeler's ranking for their lease: one Ranking, K entries, its pairs, lease submitted.
    ``comment`` (at most 1,000 characters) and ``all_bad`` are stored on the Ranking; pairs are as ranked.

    Idempotent: submitting the same assignment again (double click, retry) returns the stored Ranking;
    a different ranking for an already submitted assignment raises RankingInvalid ("already submitted").
    """
    now = now or timezone.now()
    comment, all_bad = _check_comment(comment), _check_all_bad(all_bad)
    with transaction.atomic():
        assignment = _locked_assignment_of(assignment_id=assignment_id, labeler=labeler, error=RankingInvalid)
        if assignment.status == Assignment.Status.SUBMITTED:
            existing = Ranking.objects.filter(assignment=assignment).first()
            if existing is None:
                existing = Ranking.objects.get(prompt_id=assignment.prompt_id, labeler=labeler)
            valid = ranking_rules.tiers_validate(tiers=tiers, sample_ids=[s for t in ranking_tiers(ranking=existing) for s in t])
            return _existing_ranking_or_reject(existing=existing, tiers=valid)
        _check_lease_submittable(assignment=assignment, now=now)
        _check_source(source=source, labeler=labeler)
        ranking = _ranking_write(
            prompt=assignment.prompt, labeler=labeler, tiers=tiers, flags=flags, source=source,
            time_spent_ms=time_spent_check(time_spent_ms), shown_order=assignment.shown_order,
            assignment=assignment, comment=comment, all_bad=all_bad,
        )
        assignment.status = Assignment.Status.SUBMITTED
        assignment.finished_at = now
        assignment.save(update_fields=["status", "finished_at"])
        prompt_slots_refresh(prompt_ids=[assignment.prompt_id])
    return ranking


def assignment_skip(*, assignment_id: int, labeler, reason: str, now: datetime | None = None) -> Assignment:
    """Skip the labeler's lease with a reason; the slot goes back to the pool for other labelers.

    Idempotent: skipping a skipped assignment returns it unchanged. A submitted one cannot be skipped, nor
    an expired one whose slot another labeler has taken since (``LeaseLost``, 409; nothing is written).
    """
    now = now or timezone.now()
    reason = reason.strip() if isinstance(reason, str) else ""
    if not reason:
        raise InvalidInput("please say why you skip this task", location="reason")
    if len(reason) > MAX_SKIP_REASON:
        raise InvalidInput(f"the reason is {len(reason)} characters; at most {MAX_SKIP_REASON}", location="reason")
    with transaction.atomic():
        assignment = _locked_assignment_of(assignment_id=assignment_id, labeler=labeler, error=InvalidInput)
        if assignment.status == Assignment.Status.SKIPPED:
            return assignment
        if assignment.status == Assignment.Status.SUBMITTED:
            raise InvalidInput("this task was already submitted and cannot be skipped", location="assignment")
        if _lease_slot_lost(assignment=assignment, now=now):
            raise LeaseLost("your lease expired and the task was given to another labeler; nothing to skip, "
                            "please take the next one", location="assignment")
        assignment.status = Assignment.Status.SKIPPED
        assignment.skip_reason = reason
        assignment.finished_at = now
        assignment.save(update_fields=["status", "skip_reason", "finished_at"])
        prompt_slots_refresh(prompt_ids=[assignment.prompt_id])
    return assignment


def _correctable_ranking(*, assignment: Assignment, labeler) -> Ranking:
    """The ranking of a locked, submitted lease, if the labeler may still change it: it is their last one,
    its round is open and no training run has snapshotted it. Otherwise RankingInvalid says why."""
    ranking = Ranking.objects.filter(assignment=assignment).first()
    if assignment.status != Assignment.Status.SUBMITTED or ranking is None:
        raise RankingInvalid("this task has no submitted ranking to change", location="assignment")
    last = ranking_last_for_labeler(project=assignment.prompt.project, labeler=labeler)
    if last is None or last.pk != ranking.pk:
        raise RankingInvalid("only your last ranking can be changed", location="assignment")
    round_ = Round.objects.get(pk=assignment.prompt.round_id)
    if round_.status != Round.Status.OPEN:
        raise RankingInvalid(f"round {round_.number} is {round_.get_status_display().lower()}; its rankings can "
                             "no longer be changed", location="assignment")
    reason = ranking_lock_reason(ranking)  # a training run's snapshot, checked by training (extensions.py)
    if reason:
        raise RankingInvalid(reason, location="assignment")
    return ranking


def ranking_replace(
    *,
    assignment_id: int,
    labeler,
    tiers: list[list[int]],
    flags: dict[int, list[str]] | None = None,
    comment: str = "",
    all_bad: bool = False,
    time_spent_ms: int = 0,
) -> Ranking:
    """Correct the labeler's last ranking ("Undo / edit last") while its round is open.

    The Ranking row stays (same id); its entries and pairs are replaced, the pairs keeping the reliability
    weight the old ones had; comment and verdict are replaced; the time spent is added. The lease stays
    submitted, so the prompt's slot counters do not move. Idempotent: the same correction again changes
    nothing.
    """
    comment, all_bad = _check_comment(comment), _check_all_bad(all_bad)
    time_spent_ms = time_spent_check(time_spent_ms)
    with transaction.atomic():
        assignment = _locked_assignment_of(assignment_id=assignment_id, labeler=labeler, error=RankingInvalid)
        ranking = _correctable_ranking(assignment=assignment, labeler=labeler)
        sample_ids = list(assignment.prompt.samples.order_by("position").values_list("pk", flat=True))
        clean_tiers = ranking_rules.tiers_validate(tiers=tiers, sample_ids=sample_ids)
        clean_flags = ranking_rules.flags_validate(flags=flags, sample_ids=sample_ids, allowed=RankingEntry.Flag.values)
        stored_flags = {sid: f for sid, f in ranking.entries.values_list("sample_id", "flags") if f}
        if (tiers_normalize(ranking_tiers(ranking=ranking)) == tiers_normalize(clean_tiers)
                and stored_flags == {sid: f for sid, f in clean_flags.items() if f}
                and (ranking.comment, ranking.all_bad) == (comment, all_bad)):
            return ranking  # a repeat (double click): nothing to change
        weight = ranking.pairs.values_list("weight", flat=True).first()
        ranking.pairs.all().delete()
        ranking.entries.all().delete()
        positions = ranking_rules.shown_positions(shown_order=assignment.shown_order, sample_ids=sample_ids)
        _entries_and_pairs_write(ranking=ranking, tiers=clean_tiers, flags=clean_flags, positions=positions,
                                 weight=1.0 if weight is None else weight)
        ranking.comment, ranking.all_bad = comment, all_bad
        ranking.time_spent_ms = min(ranking.time_spent_ms + time_spent_ms, MAX_TIME_SPENT_MS)
        ranking.save(update_fields=["comment", "all_bad", "time_spent_ms"])
    return ranking


def ranking_withdraw(*, assignment_id: int, labeler, now: datetime | None = None) -> Assignment:
    """Withdraw the labeler's last ranking while its round is open: the ranking, its entries and pairs are
    deleted and the lease is marked skipped (reason: withdrawn), so the slot goes back to other labelers and
    the prompt is not offered to this labeler again. Idempotent: withdrawing again returns the lease."""
    now = now or timezone.now()
    with transaction.atomic():
        assignment = _locked_assignment_of(assignment_id=assignment_id, labeler=labeler, error=RankingInvalid)
        if assignment.status == Assignment.Status.SKIPPED and assignment.skip_reason == WITHDRAWN_REASON:
            return assignment
        _correctable_ranking(assignment=assignment, labeler=labeler).delete()  # cascades to entries and pairs
        assignment.status = Assignment.Status.SKIPPED
        assignment.skip_reason = WITHDRAWN_REASON
        assignment.finished_at = now
        assignment.save(update_fields=["status", "skip_reason", "finished_at"])
        prompt_slots_refresh(prompt_ids=[assignment.prompt_id])
    return assignment


def assignment_expire_stale(*, now: datetime | None = None) -> int:
    """Mark active leases past their expiry EXPIRED and refresh their prompts' slot columns; returns how
    many. Run every minute by Celery beat.

    Never waits for a lock: leases whose prompt or row a request holds right now (being leased or
    submitted) are left for the next run, so this cannot deadlock with the requests (they take the
    assignment before the prompt; this takes the prompt first).
    """
    now = now or timezone.now()
    with transaction.atomic():
        stale = Assignment.objects.filter(status=Assignment.Status.ACTIVE, expires_at__lte=now)
        prompt_ids = list(
            Prompt.objects.select_for_update(skip_locked=True)
            .filter(pk__in=stale.values("prompt_id"))
            .values_list("pk", flat=True)
        )
        stale_ids = list(
            stale.filter(prompt_id__in=prompt_ids).select_for_update(skip_locked=True).values_list("pk", flat=True)
        )
        expired = Assignment.objects.filter(pk__in=stale_ids).update(status=Assignment.Status.EXPIRED)
        prompt_slots_refresh(prompt_ids=prompt_ids)
    return expired
