"""Scripted labelers: rank open prompts through the same services the browser uses.

Each simulated labeler ranks the responses it is shown as ``preferences.simulated`` does (utility
``utility(prompt_messages, text)`` plus Gaussian noise N(0, noise²), tiers by the one tie rule of
``preferences.tiers``) and submits with ``ranking_submit(source="simulated")``. Labelers take turns, one lease
each, until none of them gets a lease (or ``max_prompts`` rankings were submitted).
"""
import random
from collections.abc import Callable

from django.contrib.auth import get_user_model
from django.db import transaction

from annotation.errors import InvalidInput
from annotation.models import Membership, Project
from annotation.services import assignment_next_for_labeler, ranking_submit
from annotation.utility import Utility, default_utility, load_utility
from preferences.simulated import agreeing_pairs, simulated_tiers

SIM_USERNAME = "sim-labeler-{}"


def sim_labelers_ensure(*, project: Project, num_labelers: int) -> list:
    """Users ``sim-labeler-1..N`` (unusable passwords) as labelers of the project; existing roles are kept."""
    if not isinstance(num_labelers, int) or num_labelers < 1:
        raise InvalidInput("the number of labelers must be at least 1", location="labelers")
    User = get_user_model()
    users = []
    with transaction.atomic():
        for i in range(1, num_labelers + 1):
            user, created = User.objects.get_or_create(username=SIM_USERNAME.format(i))
            if created:
                user.set_unusable_password()
                user.save(update_fields=["password"])
            Membership.objects.get_or_create(project=project, user=user, defaults={"role": Membership.Role.LABELER})
            users.append(user)
    return users


def _resolve_utility(utility: Utility | str | None) -> Utility:
    if utility is None:
        return default_utility
    return load_utility(utility) if isinstance(utility, str) else utility


def _rank_one(*, assignment, utility: Utility, noise: float, tie_threshold: float, rng: random.Random) -> tuple:
    """Scores (noisy and clean) of the shown samples and the tiers they give."""
    texts = dict(assignment.prompt.samples.values_list("pk", "text"))
    clean = {sid: float(utility(assignment.prompt.messages, texts[sid])) for sid in assignment.shown_order}
    return clean, simulated_tiers(clean, noise=noise, tie_threshold=tie_threshold, rng=rng)


def labelers_simulate(
    *,
    project: Project,
    num_labelers: int,
    utility: Utility | str | None = None,
    noise: float = 0.1,
    tie_threshold: float = 0.0,
    seed: int = 0,
    max_prompts: int | None = None,
    on_ranking: Callable[[], None] | None = None,
) -> dict:
    """Run N scripted labelers over the project's open prompts; returns a summary.

    Summary keys: labelers, rankings, pairs, tied_pairs, agreement (the fraction of pairs whose chosen
    response has the higher noise-free utility: 1.0 without noise, about 0.5 when noise swamps it).
    """
    if noise < 0 or tie_threshold < 0:
        raise InvalidInput("noise and tie threshold must be >= 0", location="noise" if noise < 0 else "tie_threshold")
    if max_prompts is not None and max_prompts < 0:
        raise InvalidInput("max prompts must be >= 0", location="max_prompts")
    utility_fn = _resolve_utility(utility)
    labelers = sim_labelers_ensure(project=project, num_labelers=num_labelers)
    rng = random.Random(seed)
    summary = {"labelers": len(labelers), "rankings": 0, "pairs": 0, "tied_pairs": 0, "agreeing_pairs": 0}
    waiting = list(labelers)
    while waiting and (max_prompts is None or summary["rankings"] < max_prompts):
        labeler = waiting.pop(0)
        assignment = assignment_next_for_labeler(project=project, labeler=labeler)
        if assignment is None:
            continue  # this labeler is done: every remaining slot is taken or already theirs
        clean, tiers = _rank_one(assignment=assignment, utility=utility_fn, noise=noise, tie_threshold=tie_threshold, rng=rng)
        ranking_submit(assignment_id=assignment.pk, labeler=labeler, tiers=tiers, source="simulated")
        agreeing, pairs = agreeing_pairs(tiers, clean)
        k = len(clean)
        summary["rankings"] += 1
        summary["pairs"] += pairs
        summary["tied_pairs"] += k * (k - 1) // 2 - pairs
        summary["agreeing_pairs"] += agreeing
        waiting.append(labeler)
        if on_ranking is not None:
            on_ranking()
    summary["agreement"] = round(summary["agreeing_pairs"] / summary["pairs"], 4) if summary["pairs"] else None
    return summary
