"""Reads of the annotation app: who may see what, what is left to rank, progress figures.

Permissions: a user sees a project only if they are a member (superusers see all, as "admin"); a
labeler sees only their own leases and rankings; researchers and admins manage (import, export, train).
Anything a user may not see raises Http404, so its existence is never revealed.
"""
from datetime import datetime

from django.core.exceptions import PermissionDenied
from django.db import connection
from django.db.models import (
    Case, Count, Exists, F, FloatField, IntegerField, OuterRef, Q, QuerySet, Subquery, Value, When,
)
from django.db.models.expressions import RawSQL
from django.db.models.functions import Coalesce
from django.http import Http404
from django.utils import timezone

from annotation.models import (
    AILabeler, Assignment, Membership, PairwiseComparison, Project, Prompt, PromptPriority, Ranking, Round, Sample,
)

ADMIN = "admin"


def project_list_for_user(*, user) -> QuerySet[Project]:
    """Projects the user belongs to (all for superusers), by name."""
    if not getattr(user, "is_authenticated", False):
        return Project.objects.none()
    projects = Project.objects.all()
    if not user.is_superuser:
        projects = projects.filter(memberships__user=user)
    return projects.order_by("name", "id")


def project_get_for_user(*, user, slug: str) -> Project:
    """The project with this slug if the user may see it; Http404 otherwise (never reveals existence)."""
    project = project_list_for_user(user=user).filter(slug=slug).first()
    if project is None:
        raise Http404("No such project.")
    return project


def user_role(*, user, project: Project) -> str | None:
    """"admin" for superusers, else the membership role ("labeler" / "researcher"), None for non-members."""
    if not getattr(user, "is_authenticated", False):
        return None
    if user.is_superuser:
        return ADMIN
    return Membership.objects.filter(project=project, user=user).values_list("role", flat=True).first()


def user_can_manage(*, user, project: Project) -> bool:
    """Researchers of the project and admins may import, export and train."""
    return user_role(user=user, project=project) in {ADMIN, Membership.Role.RESEARCHER}


def user_require_manage(*, user, project: Project) -> None:
    """For pages: Django's PermissionDenied (403) unless the user may manage the project."""
    if not user_can_manage(user=user, project=project):
        raise PermissionDenied("Only researchers of this project and admins may do this.")


def live_assignment_q(*, now: datetime, prefix: str = "") -> Q:
    """Assignments that hold a slot: submitted, or active and not yet expired."""
    return Q(**{f"{prefix}status": Assignment.Status.SUBMITTED}) | Q(
        **{f"{prefix}status": Assignment.Status.ACTIVE, f"{prefix}expires_at__gt": now}
    )


HUMAN_SLOT_Q = Q(labeler__ai_labeler__isnull=True)  # AI labelers rank beside the overlap, never in a human slot


def user_is_ai_labeler(*, user) -> bool:
    return AILabeler.objects.filter(user_id=getattr(user, "pk", None)).exists()


def prompt_live_slot_count(*, prompt_id: int, now: datetime, exclude_assignment_id: int | None = None) -> int:
    """How many of the prompt's ``overlap`` slots are taken: human leases only (imported rankings without a
    labeler and AI labelers' leases don't count)."""
    assignments = Assignment.objects.filter(live_assignment_q(now=now), HUMAN_SLOT_Q, prompt_id=prompt_id)
    if exclude_assignment_id is not None:
        assignments = assignments.exclude(pk=exclude_assignment_id)
    return assignments.count()


def _live_slot_subquery(*, now: datetime) -> Subquery:
    return Subquery(
        Assignment.objects.filter(live_assignment_q(now=now), HUMAN_SLOT_Q, prompt=OuterRef("pk"))
        .order_by()
        .values("prompt")
        .annotate(n=Count("pk"))
        .values("n"),
        output_field=IntegerField(),
    )


def prompt_lease_candidates(
    *, project: Project, labeler, now: datetime | None = None, gold: bool | None = None, ai: bool | None = None,
    window: int | None = None, exclude_ids: list[int] | tuple[int, ...] = (),
) -> QuerySet[Prompt]:
    """Prompts of the project's open rounds that may have a slot for this labeler, in serving order: round,
    then active-selection priority (highest first, unprioritised last), then id.

    It filters on the prompt's denormalised slot columns (``slots_taken``, ``lease_expires_min``, kept by
    ``annotation.services`` under the prompt's row lock) and anti-joins the labeler's own leases and
    rankings, with no per-prompt subquery. It is a superset of ``prompt_available_for_labeler``: a full
    prompt whose active lease has expired stays a candidate, and the sample count is not checked. Whoever
    leases must lock the row and recount the slots exactly. An AI labeler's candidates ignore the overlap: it
    ranks beside the humans and takes none of their slots (``ai``: whether ``labeler`` is one, when the
    caller knows; looked up otherwise). ``exclude_ids``: prompts left out (those a leaser already tried).

    ``window``: only the first ``window`` candidates, found by index lookups whatever the size of the project
    (``_lease_window_sql``): what leasing runs. Without it, all candidates (for counts).
    """
    now = now or timezone.now()
    is_ai = ai if ai is not None else user_is_ai_labeler(user=labeler)
    prompts = _lease_filtered(Prompt.objects.filter(project=project, round__status=Round.Status.OPEN),
                              project=project, labeler=labeler, now=now, gold=gold, is_ai=is_ai)
    if exclude_ids:
        prompts = prompts.exclude(pk__in=list(exclude_ids))
    if window is not None:
        prompts = prompts.filter(pk__in=_lease_window_sql(
            project=project, labeler=labeler, now=now, gold=gold, is_ai=is_ai, window=window,
            exclude_ids=list(exclude_ids)))
    return prompts.order_by("round__number", F("priority__score").desc(nulls_last=True), "id")


def _lease_filtered(prompts: QuerySet[Prompt], *, project: Project, labeler, now: datetime, gold: bool | None,
                    is_ai: bool) -> QuerySet[Prompt]:
    """The candidate conditions: gold or not, a slot maybe free, not held nor ranked by this labeler."""
    held_by_labeler = Assignment.objects.filter(prompt=OuterRef("pk"), labeler=labeler).exclude(
        Q(status=Assignment.Status.EXPIRED) | Q(status=Assignment.Status.ACTIVE, expires_at__lte=now)
    )
    ranked_by_labeler = Ranking.objects.filter(prompt=OuterRef("pk"), labeler=labeler)
    if gold is not None:
        prompts = prompts.filter(is_gold=gold)
    if not is_ai:
        prompts = prompts.filter(Q(is_gold=True) | Q(slots_taken__lt=project.overlap) | Q(lease_expires_min__lte=now))
    return prompts.exclude(Exists(held_by_labeler)).exclude(Exists(ranked_by_labeler))


def _lease_window_sql(*, project: Project, labeler, now: datetime, gold: bool | None, is_ai: bool, window: int,
                      exclude_ids: list[int]) -> RawSQL:
    """The ids of the first ``window`` candidates, as a subquery: per open round a few branches, each an index
    range read in id order that stops after ``window`` rows (index ``prompt_lease_idx`` on round, is_gold,
    slots_taken, id, migration 0010):

    - the round's prioritised prompts (active selection), by score (they come first in their round);
    - its unprioritised non-gold prompts with ``slots_taken = s``, one branch per s < overlap (full prompts
      are never read, however many there are);
    - its unprioritised full prompts with an expired active lease (``prompt_lease_expiry_idx``: only
      prompts with active leases are in it);
    - its unprioritised gold prompts (no overlap limit).

    An AI labeler (no overlap) reads the round's unprioritised prompts in id order instead. On PostgreSQL the
    branches run for every open round (a LATERAL join over the project's open rounds): the work grows with
    the number of open rounds times ``window``, never with the number of prompts. SQLite has no LATERAL: the
    first open round is read by index range and any later ones by a scan and sort (a small, single-machine
    store). The union holds at most rounds × branches × window rows; the outer query sorts them in serving
    order (round number, prioritised first, score, id) and keeps ``window``.
    """
    lateral = connection.vendor == "postgresql"
    open_rounds = Round.objects.filter(project=project, status=Round.Status.OPEN).order_by("number")
    base = Prompt.objects.filter(project=project)
    if exclude_ids:
        base = base.exclude(pk__in=exclude_ids)
    base = _lease_filtered(base, project=project, labeler=labeler, now=now, gold=gold, is_ai=is_ai)
    if lateral:  # the round of the LATERAL join's current row
        in_round = base.filter(round_id=RawSQL('"lease_round"."id"', ())).annotate(ord=RawSQL('"lease_round"."number"', ()))
    else:  # the first open round (a subquery of the statement: no query beforehand); -1 sorts before any number
        in_round = base.filter(round_id=Subquery(open_rounds.values("pk")[:1])).annotate(ord=Value(-1))
    unprioritised = ~Exists(PromptPriority.objects.filter(prompt=OuterRef("pk")))
    branches: list[QuerySet] = [
        in_round.filter(priority__isnull=False).annotate(grp=Value(0), score=-F("priority__score"))
        .order_by("score", "id")]
    plain = in_round.filter(unprioritised).annotate(grp=Value(1), score=Value(0.0, output_field=FloatField()))
    # Ordered by the index's own key: with round_id fixed, only prompt_lease_idx gives this order, so the planner
    # cannot walk the primary key through the (clustered, low-id) full prompts instead.
    by_key = ("round_id", "is_gold", "slots_taken", "id")
    if is_ai:
        branches.append(plain.order_by("round_id", "id"))
    else:
        if gold is not True:
            for taken in range(project.overlap):
                branches.append(plain.filter(is_gold=False, slots_taken=taken).order_by(*by_key))
            branches.append(plain.filter(is_gold=False, slots_taken__gte=project.overlap,
                                         lease_expires_min__lte=now).order_by("id"))
        if gold is not False:
            branches.append(plain.filter(is_gold=True).order_by(*by_key))
    if not lateral:  # SQLite: the later open rounds together, scanned and sorted, only when there are any
        later = open_rounds.values("pk")[1:]
        branches.append(
            base.filter(Exists(later), round_id__in=later)
            .annotate(ord=F("round__number"), grp=Case(When(priority__isnull=False, then=Value(0)), default=Value(1)),
                      score=Coalesce(-F("priority__score"), Value(0.0, output_field=FloatField())))
            .order_by("ord", "grp", "score", "id"))
    parts, params = [], []
    for i, branch in enumerate(branches):
        sql, branch_params = branch.values("id", "ord", "grp", "score")[:window].query.sql_with_params()
        parts.append(f"SELECT * FROM ({sql}) AS lease_branch_{i}")
        params.extend(branch_params)
    union = " UNION ALL ".join(parts)
    if lateral:
        rounds_sql, rounds_params = open_rounds.values("id", "number").query.sql_with_params()
        union = (f"SELECT lease_branch.* FROM ({rounds_sql}) AS lease_round CROSS JOIN LATERAL ({union}) "
                 f"AS lease_branch")
        params = [*rounds_params, *params]
    return RawSQL(f"SELECT id FROM ({union}) AS lease_window ORDER BY ord, grp, score, id LIMIT {int(window)}",
                  tuple(params))


def prompt_available_for_labeler(
    *, project: Project, labeler, now: datetime | None = None, gold: bool | None = None
) -> QuerySet[Prompt]:
    """Prompts of the project's open rounds that this labeler could lease now, in serving order (see
    ``prompt_lease_candidates``).

    ``gold``: True for gold prompts only, False for the others, None for both. Gold prompts have no
    ``overlap`` limit (every labeler who draws one ranks it), so they are never "full".

    Left out: prompts with fewer than two samples, prompts the labeler was ever assigned (except leases
    that expired: those may be taken again), prompts the labeler already ranked, and prompts whose
    ``overlap`` slots are all taken. Slots are counted from the leases only where the slot columns cannot
    tell (a prompt whose active lease expired).
    """
    now = now or timezone.now()
    second_sample = Sample.objects.filter(prompt=OuterRef("pk")).order_by("position")[1:2]
    candidates = prompt_lease_candidates(project=project, labeler=labeler, now=now, gold=gold)
    if user_is_ai_labeler(user=labeler):
        return candidates.filter(Exists(second_sample))
    return (
        candidates
        .alias(live_slots=Coalesce(_live_slot_subquery(now=now), Value(0)))
        .filter(
            Q(is_gold=True) | Q(slots_taken__lt=project.overlap) | Q(live_slots__lt=project.overlap),
            Exists(second_sample),
        )
    )


def assignment_active_for_labeler(*, project: Project, labeler, now: datetime | None = None) -> Assignment | None:
    """The labeler's unexpired active lease in this project, if any (the oldest one)."""
    now = now or timezone.now()
    return (
        Assignment.objects.filter(
            prompt__project=project, labeler=labeler, status=Assignment.Status.ACTIVE, expires_at__gt=now
        )
        .select_related("prompt", "prompt__project")
        .order_by("created_at", "id")
        .first()
    )


def assignment_get_for_labeler(*, assignment_id: int, labeler) -> Assignment:
    """The labeler's own assignment; Http404 for anyone else's or a missing one."""
    assignment = (
        Assignment.objects.filter(pk=assignment_id, labeler=labeler)
        .select_related("prompt", "prompt__project", "prompt__round")
        .first()
    )
    if assignment is None:
        raise Http404("No such assignment.")
    return assignment


def ranking_last_for_labeler(*, project: Project, labeler) -> Ranking | None:
    """The labeler's most recent ranking in the project made on a lease (the one "Undo / edit last" may change)."""
    return (Ranking.objects.filter(prompt__project=project, labeler=labeler, assignment__isnull=False)
            .select_related("assignment", "prompt__round").order_by("-id").first())


def rankings_recent_of_labeler(*, user, project: Project, limit: int = 10) -> list[Ranking]:
    """The user's own latest rankings in the project (the project page's "recent" list), newest first."""
    return list(ranking_list_for_user(user=user, project=project).filter(labeler=user).order_by("-id")[:limit])


def label_page_items(*, assignment: Assignment, editing: Ranking | None) -> tuple[dict, dict]:
    """What the labelling page shows for an assignment: its prompt's samples by id, and, when a ranking is being
    corrected, that ranking's entries by sample id (empty otherwise)."""
    samples = {sample.pk: sample for sample in assignment.prompt.samples.all()}
    entries = {entry.sample_id: entry for entry in editing.entries.all()} if editing is not None else {}
    return samples, entries


def ranking_list_for_user(*, user, project: Project) -> QuerySet[Ranking]:
    """All rankings of the project for researchers and admins; a labeler's own rankings otherwise."""
    rankings = Ranking.objects.filter(prompt__project=project).select_related("prompt", "labeler")
    if not user_can_manage(user=user, project=project):
        if user_role(user=user, project=project) is None:
            return rankings.none()
        rankings = rankings.filter(labeler=user)
    return rankings.order_by("id")


def project_progress(*, project: Project, now: datetime | None = None) -> dict:
    """Figures for the project's progress bar.

    ``slots_total`` = open-round prompts × overlap, gold prompts left out (every labeler who draws a gold
    prompt ranks it: it has no slots); a slot is filled by a human's submitted lease, leased by an unexpired
    active one, open otherwise (AI labelers rank beside the slots). ``rankings`` and ``pairs`` count every
    source (imports, AI, arena too); ``rankings_by_source`` splits them.
    """
    now = now or timezone.now()
    open_prompts = Prompt.objects.filter(project=project, round__status=Round.Status.OPEN, is_gold=False)
    slots_total = open_prompts.count() * project.overlap
    assignments = Assignment.objects.filter(HUMAN_SLOT_Q, prompt__in=open_prompts)
    filled = assignments.filter(status=Assignment.Status.SUBMITTED).count()
    leased = assignments.filter(status=Assignment.Status.ACTIVE, expires_at__gt=now).count()
    return {
        "prompts": Prompt.objects.filter(project=project).count(),
        "open_prompts": slots_total // project.overlap,
        "slots_total": slots_total,
        "slots_filled": filled,
        "slots_leased": leased,
        "open_slots": max(slots_total - filled - leased, 0),
        "rankings": Ranking.objects.filter(prompt__project=project).count(),
        "rankings_by_source": dict(
            Ranking.objects.filter(prompt__project=project).order_by().values("source").annotate(n=Count("pk"))
            .order_by("source").values_list("source", "n")),
        "pairs": PairwiseComparison.objects.filter(prompt__project=project).count(),
        "percent_complete": round(100.0 * filled / slots_total, 1) if slots_total else 0.0,
    }


def labeler_progress(*, project: Project, labeler, now: datetime | None = None) -> dict:
    """The labeler's own figures: rankings done, prompts skipped, prompts still available to them."""
    now = now or timezone.now()
    mine = Assignment.objects.filter(prompt__project=project, labeler=labeler)
    active = assignment_active_for_labeler(project=project, labeler=labeler, now=now)
    available = prompt_available_for_labeler(project=project, labeler=labeler, now=now).count()
    return {
        "done": mine.filter(status=Assignment.Status.SUBMITTED).count(),
        "skipped": mine.filter(status=Assignment.Status.SKIPPED).count(),
        "remaining": available + (1 if active else 0),
    }
