"""Arena services and the leaderboard: Bradley-Terry with bootstrap intervals on constructed votes, arenas
and their K=2 prompts, votes stored as rankings and pairs (idempotent), bad input writing nothing."""
import math

import pytest

from lab.services import arena_close, arena_create, arena_generate, arena_vote
from lab.selectors import arena_leaderboard, arena_pair_next_for_voter, arena_shown_order
from lab.leaderboard import leaderboard_from_votes, vote_comparisons
from lab.models import Arena, ArenaPair, ArenaVote
from annotation.errors import InvalidInput, NotAllowed
from annotation.models import Membership, PairwiseComparison, Prompt, Ranking, Round, Sample
from annotation.quality.models import RankingExclusion
from annotation.selectors import prompt_available_for_labeler
from annotation.services import ranking_tiers
from training.models import ModelArtifact


# ----------------------------------------------------------------------------- pure leaderboard
def constructed_votes() -> list[tuple]:
    """strong beats weak 30:8 (2 ties); mid and weak are even (10:10); strong beats mid 12:8."""
    return ([("strong", "weak", "a")] * 30 + [("strong", "weak", "b")] * 8 + [("strong", "weak", "tie")] * 2
            + [("mid", "weak", "a")] * 10 + [("mid", "weak", "b")] * 10
            + [("strong", "mid", "a")] * 12 + [("strong", "mid", "b")] * 8)


def test_leaderboard_ranks_the_stronger_model_first_with_intervals_around_the_estimate():
    rows = leaderboard_from_votes(constructed_votes(), resamples=200, seed=0)
    assert [r["model"] for r in rows] == ["strong", "mid", "weak"]
    for row in rows:
        assert row["log_strength_low"] < row["log_strength"] < row["log_strength_high"]
        assert row["strength_low"] < row["strength"] < row["strength_high"]
        assert row["strength"] == pytest.approx(math.exp(row["log_strength"]))
        assert row["rating_low"] < row["rating"] < row["rating_high"]
    strong = rows[0]
    assert (strong["votes"], strong["wins"], strong["losses"], strong["ties"]) == (60, 42, 16, 2)
    assert strong["rank"] == 1 and rows[2]["rank"] == 2  # weak's interval lies wholly below strong's only
    assert sum(r["log_strength"] for r in rows) == pytest.approx(0.0, abs=1e-9)  # log-strengths have mean 0


def test_leaderboard_is_deterministic_for_a_seed_and_varies_with_it():
    votes = constructed_votes()
    first = leaderboard_from_votes(votes, resamples=100, seed=7)
    assert first == leaderboard_from_votes(votes, resamples=100, seed=7)
    other = leaderboard_from_votes(votes, resamples=100, seed=8)
    assert [r["log_strength"] for r in first] == [r["log_strength"] for r in other]  # the point estimate has no noise
    assert [r["log_strength_low"] for r in first] != [r["log_strength_low"] for r in other]


def test_ties_and_both_bad_are_half_a_win_each_way():
    assert vote_comparisons([("x", "y", "tie"), ("x", "y", "both_bad"), ("x", "y", "b")]) == [
        ("x", "y", 0.5), ("y", "x", 0.5), ("x", "y", 0.5), ("y", "x", 0.5), ("y", "x", 1.0)]
    rows = leaderboard_from_votes([("x", "y", "tie")] * 10, resamples=20, seed=0)
    assert rows[0]["log_strength"] == pytest.approx(rows[1]["log_strength"])
    assert leaderboard_from_votes([], resamples=10) == []


# ----------------------------------------------------------------------------- arenas in the database
@pytest.fixture
def arena_setup(make_user, make_project):
    researcher, labeler, outsider = make_user("rita"), make_user("lars"), make_user("otto")
    project = make_project(slug="arena", k=4, prompts=2, labelers=[labeler], researchers=[researcher])
    model_a = ModelArtifact.objects.create(project=project, kind="policy", name="sft-policy", path="a")
    model_b = ModelArtifact.objects.create(project=project, kind="policy", name="dpo-policy", path="b")
    return project, researcher, labeler, outsider, model_a, model_b


def items(n: int = 3) -> list[dict]:
    return [{"prompt": f"Question {i}?", "response_a": f"A answers {i}.", "response_b": f"B answers {i}."}
            for i in range(n)]


def make_arena(arena_setup, n: int = 3) -> Arena:
    project, researcher, _, _, model_a, model_b = arena_setup
    return arena_create(project=project, model_a=model_a, model_b=model_b, name="sft vs dpo", items=items(n),
                        user=researcher)


def test_arena_create_with_responses_opens_a_closed_round_of_k2_prompts(arena_setup):
    project, _, labeler, *_ = arena_setup
    arena = make_arena(arena_setup)
    assert arena.status == Arena.Status.OPEN and arena.summary == {"pairs": 3, "dropped_identical": 0}
    assert arena.round.status == Round.Status.CLOSED and arena.round.number == 2
    assert "sft" not in arena.round.source and "dpo" not in arena.round.source
    for pair in ArenaPair.objects.filter(arena=arena):
        assert pair.prompt.samples.count() == 2
        assert pair.sample_a.text.startswith("A answers") and pair.sample_a.model_name == "sft-policy"
        assert pair.sample_b.text.startswith("B answers") and pair.sample_b.model_name == "dpo-policy"
        assert {pair.sample_a.position, pair.sample_b.position} == {0, 1}
    # arena prompts never enter the regular labelling queue
    assert not prompt_available_for_labeler(project=project, labeler=labeler).filter(round=arena.round).exists()


def test_identical_responses_are_dropped_and_counted(arena_setup):
    project, researcher, _, _, model_a, model_b = arena_setup
    same = [{"prompt": "Q?", "response_a": "same", "response_b": "same"}] + items(2)
    arena = arena_create(project=project, model_a=model_a, model_b=model_b, name="x", items=same, user=researcher)
    assert arena.summary == {"pairs": 2, "dropped_identical": 1}
    assert Prompt.objects.filter(round=arena.round).count() == 2


@pytest.mark.parametrize("change, location", [
    ({"model_b": "same"}, "model_b"),
    ({"model_b": "other project"}, "model_b"),
    ({"items": [{"prompt": "Q?", "response_a": "x"}]}, "items[0].response_b"),
    ({"items": items(2) + [{"prompt": "Q?"}]}, "items"),
    ({"items": [{"prompt": "Q?", "extra": 1}]}, "items[0].extra"),
    ({"items": []}, "items"),
    ({"name": "  "}, "name"),
    ({"sampling": {"temperature": "hot"}}, "sampling.temperature"),
])
def test_bad_arena_input_is_rejected_with_its_location_and_nothing_written(arena_setup, make_project, change, location):
    project, researcher, _, _, model_a, model_b = arena_setup
    kwargs = dict(project=project, model_a=model_a, model_b=model_b, name="n", items=items(2), user=researcher)
    if change.get("model_b") == "same":
        change = {"model_b": model_a}
    elif change.get("model_b") == "other project":
        other = make_project(slug="other", k=2, prompts=0)
        change = {"model_b": ModelArtifact.objects.create(project=other, kind="policy", name="o", path="o")}
    rounds = Round.objects.count()
    with pytest.raises(InvalidInput) as caught:
        arena_create(**{**kwargs, **change})
    assert caught.value.location == location
    assert Round.objects.count() == rounds and not Arena.objects.exists() and not Sample.objects.filter(
        prompt__round__number__gt=1).exists()


def test_only_researchers_create_arenas(arena_setup):
    project, _, labeler, _, model_a, model_b = arena_setup
    with pytest.raises(NotAllowed):
        arena_create(project=project, model_a=model_a, model_b=model_b, name="n", items=items(1), user=labeler)
    assert not Arena.objects.exists()


def _vote(pair, voter, choice, **extra):
    left = arena_shown_order(pair=pair, voter=voter)[0]
    return arena_vote(pair_id=pair.pk, voter=voter, choice=choice, left_sample_id=left, **extra)


def test_a_vote_is_a_ranking_with_one_pair_and_repeating_it_writes_nothing(arena_setup, db_counts):
    labeler = arena_setup[2]
    arena = make_arena(arena_setup)
    pair = arena_pair_next_for_voter(arena=arena, voter=labeler)
    left, right = arena_shown_order(pair=pair, voter=labeler)
    vote = _vote(pair, labeler, "left", time_spent_ms=1234)
    assert vote.outcome == ("a" if left == pair.sample_a_id else "b") and vote.left_sample_id == left
    assert ranking_tiers(ranking=vote.ranking) == [[left], [right]]
    assert vote.ranking.source == Ranking.Source.ARENA and vote.ranking.time_spent_ms == 1234
    stored = PairwiseComparison.objects.get(ranking=vote.ranking)
    assert (stored.chosen_id, stored.rejected_id, stored.margin) == (left, right, 1)
    shown = dict(vote.ranking.entries.values_list("sample_id", "shown_position"))
    assert shown == {left: 0, right: 1}
    before = db_counts()
    assert _vote(pair, labeler, "left", time_spent_ms=999).pk == vote.pk  # double submit: same vote
    with pytest.raises(InvalidInput, match="different verdict"):
        _vote(pair, labeler, "right")
    assert db_counts() == before and ArenaVote.objects.count() == 1
    assert arena_pair_next_for_voter(arena=arena, voter=labeler).pk != pair.pk


@pytest.mark.parametrize("spent", [-1, 2**31, True, 1.5])
def test_a_vote_with_a_bad_time_spent_writes_nothing(arena_setup, db_counts, spent):
    labeler = arena_setup[2]
    pair = arena_pair_next_for_voter(arena=make_arena(arena_setup), voter=labeler)
    before = db_counts()
    with pytest.raises(InvalidInput, match="time spent") as error:
        _vote(pair, labeler, "left", time_spent_ms=spent)
    assert error.value.location == "time_spent_ms" and db_counts() == before



@pytest.mark.parametrize("choice", ["tie", "both_bad"])
def test_tie_and_both_bad_are_one_tier_without_pairs(arena_setup, choice):
    labeler = arena_setup[2]
    pair = ArenaPair.objects.filter(arena=make_arena(arena_setup)).first()
    vote = _vote(pair, labeler, choice)
    assert vote.outcome == choice and len(ranking_tiers(ranking=vote.ranking)) == 1
    assert not vote.ranking.pairs.exists()


def test_votes_are_checked_before_anything_is_written(arena_setup, db_counts):
    project, researcher, labeler, outsider, *_ = arena_setup
    arena = make_arena(arena_setup)
    pair = ArenaPair.objects.filter(arena=arena).first()
    left, right = arena_shown_order(pair=pair, voter=labeler)
    before = db_counts()
    with pytest.raises(InvalidInput, match="shown on the left"):
        arena_vote(pair_id=pair.pk, voter=labeler, choice="left", left_sample_id=right)
    with pytest.raises(InvalidInput, match="choice must be one of"):
        arena_vote(pair_id=pair.pk, voter=labeler, choice="A", left_sample_id=left)
    with pytest.raises(NotAllowed):
        _vote(pair, outsider, "left")
    arena_close(arena=arena, user=researcher)
    with pytest.raises(InvalidInput, match="closed"):
        _vote(pair, labeler, "left")
    assert db_counts() == before and not ArenaVote.objects.exists()
    with pytest.raises(NotAllowed):
        arena_close(arena=arena, user=labeler, reopen=True)
    assert arena_close(arena=arena, user=researcher, reopen=True).status == Arena.Status.OPEN


def test_order_is_drawn_per_voter_and_pair(arena_setup, make_user):
    project = arena_setup[0]
    arena = make_arena(arena_setup, n=12)
    voters = [make_user(f"v{i}") for i in range(8)]
    Membership.objects.bulk_create(Membership(project=project, user=v) for v in voters)
    lefts = {arena_shown_order(pair=p, voter=v)[0] == p.sample_a_id for p in arena.pairs.all() for v in voters}
    assert lefts == {True, False}  # model A is shown on both sides
    pair = arena.pairs.first()
    assert arena_shown_order(pair=pair, voter=voters[0]) == arena_shown_order(pair=pair, voter=voters[0])


def test_leaderboard_from_the_database_counts_votes_and_skips_excluded_rankings(arena_setup, make_user):
    project, researcher, *_ , model_a, model_b = arena_setup
    arena = make_arena(arena_setup, n=4)
    voters = [make_user(f"voter{i}") for i in range(5)]
    Membership.objects.bulk_create(Membership(project=project, user=v) for v in voters)
    for i, voter in enumerate(voters):
        for j, pair in enumerate(arena.pairs.all()):
            sample = pair.sample_a_id if (i + j) % 5 else pair.sample_b_id  # A wins 4 of 5
            choice = "left" if arena_shown_order(pair=pair, voter=voter)[0] == sample else "right"
            _vote(pair, voter, choice)
    board = arena_leaderboard(project=project, resamples=50, seed=0)
    assert board["votes"] == 20
    assert [r["model_id"] for r in board["rows"]] == [model_a.pk, model_b.pk]
    assert board["rows"][0]["name"] == "sft-policy" and board["rows"][0]["wins"] == 16
    loss = ArenaVote.objects.filter(outcome="b").first()
    RankingExclusion.objects.create(ranking=loss.ranking, reason="spam")
    assert arena_leaderboard(project=project, resamples=10)["votes"] == 19


@pytest.mark.slow
def test_arena_generate_writes_one_response_per_checkpoint_and_opens(arena_setup, tmp_path, settings):
    from training.ml.tiny_models import build_tiny_causal_lm, build_tokenizer

    settings.ARTIFACT_ROOT = tmp_path  # artifacts live inside the artifact root

    project, researcher, _, _, model_a, model_b = arena_setup
    tokenizer = build_tokenizer([f"question {i} answer the river hill story" for i in range(50)], tmp_path / "tok",
                                vocab_size=300)
    for artifact, seed in ((model_a, 0), (model_b, 1)):
        artifact.path = str(build_tiny_causal_lm(tmp_path / artifact.name, tokenizer, hidden=16, layers=1, heads=2,
                                                 max_positions=64, seed=seed))
        artifact.save()
    arena = arena_create(project=project, model_a=model_a, model_b=model_b, name="gen", user=researcher,
                         items=["Tell a story.", "Answer the question."], sampling={"max_new_tokens": 8})
    assert arena.status == Arena.Status.GENERATING and not arena.pairs.exists()
    arena = arena_generate(arena=arena, log=lambda message: None)
    assert arena.status == Arena.Status.OPEN
    assert arena.summary["pairs"] + arena.summary["dropped_identical"] == 2
    for pair in arena.pairs.all():
        assert pair.sample_a.model_name == "sft-policy" and pair.sample_b.model_name == "dpo-policy"
        assert pair.sample_a.text != pair.sample_b.text
    assert arena_generate(arena=arena).pk == arena.pk  # already open: nothing happens


def test_generated_text_is_made_storable():
    from lab.services import MAX_RESPONSE_CHARS, _generated_text

    assert _generated_text("a\x00b") == "ab" and _generated_text(" \x00 ") == "(empty response)"
    assert len(_generated_text("x" * (MAX_RESPONSE_CHARS + 5))) == MAX_RESPONSE_CHARS


def test_only_generators_are_offered_and_accepted(arena_setup, settings):
    import uuid
    from pathlib import Path

    project, researcher, *_ , model_a, _ = arena_setup
    tmp_path = Path(settings.ARTIFACT_ROOT) / "base" / f"arena-test-{uuid.uuid4().hex[:8]}"  # models live in the root
    tmp_path.mkdir(parents=True)
    for name, architecture in (("rm-base", "GPT2ForSequenceClassification"), ("lm-base", "GPT2LMHeadModel")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text(f'{{"architectures": ["{architecture}"]}}')
    rm_base = ModelArtifact.objects.create(project=project, kind="base", name="rm-base", path=str(tmp_path / "rm-base"))
    lm_base = ModelArtifact.objects.create(project=project, kind="base", name="lm-base", path=str(tmp_path / "lm-base"))
    reward = ModelArtifact.objects.create(project=project, kind="reward", name="rm", path="r")
    from lab.selectors import arena_generators
    from lab.views import ArenaCreateForm

    offered = {a.name for a in arena_generators(project=project)}
    assert offered == {"sft-policy", "dpo-policy", "lm-base"}
    assert {label.split(" ")[0] for _, label in ArenaCreateForm(project=project).fields["model_a"].choices} == offered
    for bad in (rm_base, reward):
        with pytest.raises(InvalidInput, match="reward model cannot generate") as error:
            arena_create(project=project, model_a=bad, model_b=model_a, name="x", items=items(1), user=researcher)
        assert error.value.location == "model_a"
    assert not Arena.objects.exists()
    assert arena_create(project=project, model_a=lm_base, model_b=model_a, name="ok", items=items(1),
                        user=researcher).status == Arena.Status.OPEN


def test_an_arena_whose_responses_are_all_identical_ends_closed_with_the_reason(arena_setup):
    project, researcher, labeler, _, model_a, model_b = arena_setup
    same = [{"prompt": f"Q{i}?", "response_a": "Same.", "response_b": "Same."} for i in range(2)]
    arena = arena_create(project=project, model_a=model_a, model_b=model_b, name="same", items=same, user=researcher)
    assert arena.status == Arena.Status.CLOSED and arena.summary["pairs"] == 0
    assert "identical responses to all 2 prompts" in arena.summary["error"]
    assert arena_pair_next_for_voter(arena=arena, voter=labeler) is None
    with pytest.raises(InvalidInput, match="no pairs to vote on"):
        arena_close(arena=arena, user=researcher, reopen=True)
