"""Moving the arena models from annotation to lab loses nothing: a database that holds an arena with votes
before annotation 0009 / lab 0001 reads the same arena, pairs and votes through ``lab.models`` after them.

Django's MigrationExecutor takes the database back to annotation 0008 (lab unapplied), the rows are written
with the models as they were then (``annotation.Arena`` ...), and the executor migrates forward again. On
PostgreSQL only: the test transaction rolls the migrations back with everything else (transactional DDL)."""
import pytest
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

BEFORE = [("annotation", "0008_ai_labeler_kind_registered_hook"), ("lab", None)]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


def _write_arena_with_votes(apps) -> dict:
    """An arena of one prompt (two samples, one per model) and two voters' votes, each with its ranking."""
    User = apps.get_model("auth", "User")
    Project, Round = apps.get_model("annotation", "Project"), apps.get_model("annotation", "Round")
    Prompt, Sample = apps.get_model("annotation", "Prompt"), apps.get_model("annotation", "Sample")
    Ranking, RankingEntry = apps.get_model("annotation", "Ranking"), apps.get_model("annotation", "RankingEntry")
    Artifact = apps.get_model("training", "ModelArtifact")
    Arena, ArenaPair = apps.get_model("annotation", "Arena"), apps.get_model("annotation", "ArenaPair")
    ArenaVote = apps.get_model("annotation", "ArenaVote")
    project = Project.objects.create(slug="moved", name="Moved", k=2, overlap=1)
    researcher = User.objects.create(username="rita")
    model_a = Artifact.objects.create(project=project, kind="policy", name="sft", path="a")
    model_b = Artifact.objects.create(project=project, kind="policy", name="dpo", path="b")
    round_ = Round.objects.create(project=project, number=1, status="closed")
    prompt = Prompt.objects.create(project=project, round=round_, messages=[{"role": "user", "content": "Hi?"}])
    sample_a, sample_b = (Sample.objects.create(prompt=prompt, text=t, text_sha256=t * 64, position=i)
                          for i, t in enumerate("ab"))
    arena = Arena.objects.create(project=project, name="sft vs dpo", model_a=model_a, model_b=model_b,
                                 round=round_, status="open", summary={"pairs": 1}, created_by=researcher)
    pair = ArenaPair.objects.create(arena=arena, prompt=prompt, sample_a=sample_a, sample_b=sample_b)
    votes = {}
    for name, outcome, tiers in [("v1", "a", [[sample_a], [sample_b]]), ("v2", "tie", [[sample_a, sample_b]])]:
        voter = User.objects.create(username=name)
        ranking = Ranking.objects.create(prompt=prompt, labeler=voter, time_spent_ms=1200)
        for tier, samples in enumerate(tiers, start=1):
            for sample in samples:
                RankingEntry.objects.create(ranking=ranking, sample=sample, tier=tier, shown_position=sample.position)
        votes[name] = ArenaVote.objects.create(pair=pair, voter=voter, outcome=outcome, left_sample=sample_b,
                                               ranking=ranking, time_spent_ms=1200).pk
    return {"arena": arena.pk, "pair": pair.pk, "votes": votes, "samples": (sample_a.pk, sample_b.pk),
            "models": (model_a.pk, model_b.pk), "round": round_.pk}


@pytest.mark.django_db
def test_an_arena_with_votes_survives_the_move_to_lab(on_postgresql):
    from lab.models import Arena, ArenaVote

    executor = _migrate(BEFORE)
    try:
        applied = MigrationExecutor(connection).loader.applied_migrations  # read back from django_migrations
        assert ("annotation", "0009_move_arena_to_lab") not in applied and ("lab", "0001_initial") not in applied
        old_apps = executor.loader.project_state(list(applied)).apps
        assert not any(model._meta.app_label == "lab" for model in old_apps.get_models())
        ContentType.objects.get_or_create(app_label="annotation", model="arenavote")
        written = _write_arena_with_votes(old_apps)
    finally:
        executor = _migrate(executor.loader.graph.leaf_nodes())

    arena = Arena.objects.get(pk=written["arena"])
    assert (arena.name, arena.status, arena.summary) == ("sft vs dpo", Arena.Status.OPEN, {"pairs": 1})
    assert (arena.model_a_id, arena.model_b_id, arena.round_id) == (*written["models"], written["round"])
    pair = arena.pairs.get()
    assert (pair.pk, pair.sample_a_id, pair.sample_b_id) == (written["pair"], *written["samples"])
    votes = {vote.voter.username: vote for vote in ArenaVote.objects.filter(pair=pair)}
    assert {name: vote.pk for name, vote in votes.items()} == written["votes"]
    assert votes["v1"].outcome == ArenaVote.Outcome.A and votes["v2"].outcome == ArenaVote.Outcome.TIE
    assert votes["v1"].ranking.entries.count() == 2 and votes["v1"].left_sample_id == written["samples"][1]
    assert arena.round.arena == arena and votes["v2"].ranking.arena_vote == votes["v2"]  # reverse relations too
    assert ContentType.objects.get_for_model(ArenaVote).app_label == "lab"  # relabelled, permissions follow
    assert not ContentType.objects.filter(app_label="annotation", model__startswith="arena").exists()
