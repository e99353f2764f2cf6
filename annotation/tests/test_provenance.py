"""Label provenance: every ranking carries its source, and exports and quality figures use what they say.

The mix of issue 15: two simulated labelers, a human ranking a gold prompt, an AI labeler and arena votes in one
project. Default exports are human only; explicit choices add the others; quality figures do not move when
AI rankings and arena votes arrive; gold prompts and arena votes never enter the review queue; gold prompts
take no slots.
"""
import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.test import Client

from lab.ai_labelers.services import ai_labeler_create, ai_labeler_run
from lab.services import arena_create, arena_vote
from lab.selectors import arena_pair_next_for_voter, arena_shown_order
from annotation.errors import InvalidInput
from annotation.exporters import export_preferences
from annotation.models import PairwiseComparison, Prompt, Ranking
from annotation.provenance import source_selection_parse
from annotation.quality.selectors import quality_report
from annotation.quality.services import gold_set
from annotation.selectors import project_progress
from annotation.services import ranking_record
from annotation.simulation import labelers_simulate
from training.models import ModelArtifact


def answer_number(prompt_messages, response_text):
    return float(response_text.split()[1])


def _rows(project, fmt="pairs", **choice):
    selection = source_selection_parse(**choice)
    data = b"".join(export_preferences(project=project, fmt=fmt, file_format="jsonl", selection=selection))
    return [json.loads(line) for line in data.splitlines()]


@pytest.fixture(autouse=True)
def registered(settings):
    """The operator registers this module's scorer by name (users pick names, never module:function)."""
    settings.RLHF_HOOKS = {"utility": {"answer-number": f"{__name__}:answer_number"}}


@pytest.fixture
def mix(make_user, make_project):
    """K=3, overlap 2: 4 prompts ranked by 2 simulated labelers, 1 gold prompt two humans disagree on."""
    alice, bob, rita = make_user("alice"), make_user("bob"), make_user("rita")
    project = make_project(slug="mix", k=3, overlap=2, prompts=5, labelers=[alice, bob], researchers=[rita])
    gold_prompt = Prompt.objects.filter(project=project).order_by("id").first()
    ids = list(gold_prompt.samples.order_by("position").values_list("pk", flat=True))
    gold_set(prompt=gold_prompt, tiers=[[i] for i in ids])
    ranking_record(prompt=gold_prompt, labeler=alice, tiers=[[i] for i in ids], source="human")
    ranking_record(prompt=gold_prompt, labeler=bob, tiers=[[i] for i in ids[::-1]], source="human")
    summary = labelers_simulate(project=project, num_labelers=2, utility=f"{__name__}:answer_number", noise=2.0, seed=3)
    assert summary["rankings"] >= 8
    return {"project": project, "alice": alice, "bob": bob, "rita": rita, "gold": gold_prompt}


def _add_ai_and_arena(mix):
    project, alice = mix["project"], mix["alice"]
    rules = ai_labeler_create(project=project, name="rules", kind="utility", spec="answer-number")
    assert ai_labeler_run(labeler=rules)["rankings"] >= 4
    model_a = ModelArtifact.objects.create(project=project, kind="policy", name="sft", path="a")
    model_b = ModelArtifact.objects.create(project=project, kind="policy", name="dpo", path="b")
    arena = arena_create(project=project, model_a=model_a, model_b=model_b, name="a vs b", user=mix["rita"],
                         items=[{"prompt": f"Q{i}?", "response_a": f"A {i}.", "response_b": f"B {i}."}
                                for i in range(3)])
    for voter, choice in ((alice, "left"), (mix["bob"], "right")):
        while (pair := arena_pair_next_for_voter(arena=arena, voter=voter)) is not None:
            arena_vote(pair_id=pair.pk, voter=voter, choice=choice,
                       left_sample_id=arena_shown_order(pair=pair, voter=voter)[0])
    return rules


def test_every_writer_records_its_source(mix):
    _add_ai_and_arena(mix)
    sources = dict(Ranking.objects.values_list("labeler__username", "source").filter(prompt=mix["gold"]))
    assert sources["alice"] == sources["bob"] == "gold"  # a person's ranking of a gold prompt
    by_source = {s: Ranking.objects.filter(source=s).count() for s in Ranking.Source.values}
    assert by_source["simulated"] >= 8 and by_source["ai"] >= 4 and by_source["arena"] == 6 and by_source["gold"] >= 2
    assert not Ranking.objects.filter(labeler__username__startswith="ai-").exclude(source="ai").exists()


def test_default_export_is_human_only_and_choices_add_the_others(mix):
    _add_ai_and_arena(mix)
    human = _rows(mix["project"])
    assert human and {r["source"] for r in human} == {"simulated", "gold"}
    assert {r["source"] for r in _rows(mix["project"], choice="ai")} == {"ai"}
    assert {r["source"] for r in _rows(mix["project"], choice="both")} == {"simulated", "gold", "ai"}
    assert {r["source"] for r in _rows(mix["project"], choice="arena")} == {"arena"}
    assert {r["source"] for r in _rows(mix["project"], include_arena=True)} == {"simulated", "gold", "arena"}
    assert {r["source"] for r in _rows(mix["project"], fmt="rankings")} == {"simulated", "gold"}
    weighted = _rows(mix["project"], choice="weighted", ai_weight=0.25)
    stored = dict(PairwiseComparison.objects.values_list("pk", "weight"))
    assert {r["weight"] for r in weighted if r["source"] == "ai"} == {0.25}
    assert all(r["weight"] == 1.0 for r in weighted if r["source"] != "ai") and set(stored.values()) == {1.0}
    assert len(weighted) == len(_rows(mix["project"], choice="both"))


def test_quality_figures_are_unchanged_by_ai_rankings_and_arena_votes(mix):
    before = quality_report(project=mix["project"])
    _add_ai_and_arena(mix)
    after = quality_report(project=mix["project"])
    for key in ("overall", "rounds", "review_queue", "timeline"):
        assert after[key] == before[key], key
    humans = {r["labeler"]: r for r in before["labelers"]}
    assert {r["labeler"]: r for r in after["labelers"] if r["source"] != "ai"} == humans
    assert [r["labeler"] for r in after["labelers"] if r["source"] == "ai"] == ["ai-rules@mix"]
    assert after["sources"]["included_sources"] == ["gold", "human", "imported", "simulated"]
    assert after["sources"]["left_out"]["ai"] >= 4
    both = quality_report(project=mix["project"], sources="both")
    assert both["overall"]["rankings"] > after["overall"]["rankings"]
    with pytest.raises(InvalidInput) as error:
        quality_report(project=mix["project"], sources="arena")
    assert error.value.location == "sources"


def test_gold_prompts_stay_out_of_the_review_queue_and_the_slots(mix):
    report = quality_report(project=mix["project"])
    assert mix["gold"].pk not in {row["prompt_id"] for row in report["review_queue"]}
    progress = project_progress(project=mix["project"])
    assert progress["slots_total"] == 4 * 2 and progress["slots_filled"] == 8 and progress["percent_complete"] == 100.0
    assert progress["rankings_by_source"]["gold"] >= 2  # alice, bob, and simulated labelers on gold turns


def test_speed_flag_uses_timed_human_rankings_only(mix):
    timed = Ranking.objects.filter(prompt=mix["gold"])
    timed.filter(labeler=mix["alice"]).update(time_spent_ms=30_000)
    timed.filter(labeler=mix["bob"]).update(time_spent_ms=20_000)
    rows = {r["labeler"]: r for r in quality_report(project=mix["project"])["labelers"]}
    assert not any(r["speed_flag"] or r["fast_rankings"] for r in rows.values())  # simulated ones have no time


def test_gold_rate_defaults_to_a_tenth_once_gold_exists_and_warns_at_zero(mix):
    from annotation.quality.services import quality_settings_update

    report = quality_report(project=mix["project"])
    assert report["settings"]["gold_rate"] == 0.1 and report["warnings"] == []
    quality_settings_update(project=mix["project"], gold_rate=0.0)
    warnings = quality_report(project=mix["project"])["warnings"]
    assert len(warnings) == 1 and "1 gold prompts are withheld" in warnings[0]


def test_export_api_and_page_take_the_source_choice(mix):
    _add_ai_and_arena(mix)
    client = Client()
    client.force_login(mix["rita"])
    url = "/api/projects/mix/export/"
    plain = client.get(url)  # format and file_format have defaults, as the schema says
    assert plain.status_code == 200 and plain["X-Export-Sources"].startswith("human (gold, human, imported")
    rows = [json.loads(line) for line in b"".join(plain.streaming_content).splitlines()]
    assert {r["source"] for r in rows} == {"simulated", "gold"}
    ai = client.get(url, {"sources": "weighted", "ai_weight": "0.5"})
    assert ai.status_code == 200 and "ai x0.5" in ai["X-Export-Sources"]
    for params, where in (({"sources": "robots"}, "sources"), ({"sources": "human", "ai_weight": "0.5"}, "ai_weight"),
                          ({"sources": "weighted", "ai_weight": "2"}, "ai_weight")):
        bad = client.get(url, params)
        assert bad.status_code == 400 and bad.json()["location"] == where, params
    page = client.get("/p/mix/export/", {"sources": "arena"})
    assert page.status_code == 200 and page["X-Export-Sources"] == "arena (arena)"
    assert client.get("/p/mix/export/", {"sources": "x"}).status_code == 400


def test_export_command_takes_the_source_choice(mix, tmp_path):
    _add_ai_and_arena(mix)
    out, err = tmp_path / "ai.jsonl", StringIO()
    call_command("export_preferences", "--project", "mix", "--format", "pairs", "--sources", "ai",
                 "--output", str(out), stderr=err)
    assert {json.loads(line)["source"] for line in out.read_text().splitlines()} == {"ai"}
    assert "sources: ai (ai)" in err.getvalue()
    with pytest.raises(CommandError, match="ai_weight"):
        call_command("export_preferences", "--project", "mix", "--format", "pairs", "--ai-weight", "0.5",
                     "--output", str(tmp_path / "x.jsonl"))


def test_parquet_export_records_the_choice(mix):
    import io

    import pyarrow.parquet as pq

    selection = source_selection_parse(choice="weighted", ai_weight=0.3)
    data = b"".join(export_preferences(project=mix["project"], fmt="pairs", file_format="parquet", selection=selection))
    meta = json.loads(pq.read_schema(io.BytesIO(data)).metadata[b"rlhf_studio.sources"])
    assert meta == {"sources": "weighted", "included_sources": ["ai", "gold", "human", "imported", "simulated"],
                    "ai_weight": 0.3, "include_arena": False}


def test_backfill_marks_ai_arena_and_gold_rankings(mix):
    from importlib import import_module

    from django.db import connection
    from django.db.migrations.loader import MigrationLoader

    _add_ai_and_arena(mix)
    expected = dict(Ranking.objects.values_list("pk", "source"))
    Ranking.objects.exclude(source="imported").update(source="human")
    # the models as migration 0007 saw them (ArenaVote was annotation's then; the lab move kept its table)
    migration = ("annotation", "0007_ranking_source_provenance")
    apps_then = MigrationLoader(connection).project_state(migration).apps
    import_module("annotation.migrations.0007_ranking_source_provenance").backfill_sources(apps_then, None)
    got = dict(Ranking.objects.values_list("pk", "source"))
    # simulated rankings were not recorded apart before; the rest comes back exactly
    assert {pk: s for pk, s in got.items()} == {pk: ("human" if s == "simulated" else s) for pk, s in expected.items()}


def test_selection_says_when_it_cannot_act_and_shows_its_scores(make_user, make_project):
    from lab.active.selectors import selection_notes
    from lab.active.services import round_select
    from annotation.models import Round
    from annotation.tests.test_quality_services import rank_all

    alice, bob, rita = make_user("alice"), make_user("bob"), make_user("rita")
    project = make_project(slug="sel", k=3, overlap=2, prompts=3, labelers=[alice, bob], researchers=[rita])
    round_ = Round.objects.get(project=project)
    fresh = round_select(round_=round_, strategy="disagreement")
    assert fresh.params["can_act"] is False and "every prompt scores 0" in fresh.params["notes"][0]
    rank_all(project, alice)
    rank_all(project, bob, reverse=True)  # every prompt disagrees, and both slots of each are filled
    full = round_select(round_=round_, strategy="disagreement")
    assert full.params["can_act"] is False and "all 3 disagreeing prompts" in full.params["notes"][0]
    assert set(full.scores.values()) == {1.0}
    assert "barely separates" in selection_notes(round_=round_, strategy="uncertainty",
                                                 scores={1: 0.9975, 2: 0.9999})[0]
    assert selection_notes(round_=round_, strategy="uncertainty", scores={1: 0.2, 2: 0.9}) == []
    client = Client()
    client.force_login(rita)
    listed = client.get("/api/projects/sel/quality/selections/").json()["selections"][0]
    assert listed["scores"] == full.scores and listed["can_act"] is False and listed["notes"] == full.params["notes"]
    page = client.get("/p/sel/quality/").content.decode()
    assert "all 3 disagreeing prompts" in page and f"{full.order[0]}: 1.0" in page


@pytest.mark.parametrize("kwargs, where", [
    ({"choice": "everything"}, "sources"), ({"choice": 3}, "sources"), ({"include_arena": "maybe"}, "include_arena"),
    ({"include_arena": 1}, "include_arena"), ({"choice": "weighted", "ai_weight": 0}, "ai_weight"),
    ({"choice": "weighted", "ai_weight": float("nan")}, "ai_weight"), ({"choice": "weighted", "ai_weight": True},
                                                                        "ai_weight"),
    ({"choice": "weighted", "ai_weight": "heavy"}, "ai_weight"), ({"choice": "ai", "ai_weight": 0.5}, "ai_weight"),
])
def test_source_choice_rejects_bad_input_naming_the_field(kwargs, where):
    with pytest.raises(InvalidInput) as error:
        source_selection_parse(**kwargs)
    assert error.value.location == where


def test_source_choice_defaults_and_labels():
    assert source_selection_parse().sources == ("gold", "human", "imported", "simulated")
    weighted = source_selection_parse(choice="weighted", include_arena="true")
    assert weighted.ai_weight == 0.5 and weighted.sources == ("ai", "arena", "gold", "human", "imported", "simulated")
    assert weighted.weight_factor("ai") == 0.5 and weighted.weight_factor("human") == 1.0
    assert weighted.label() == "weighted (ai ×0.5, arena, gold, human, imported, simulated)"
    assert source_selection_parse(choice="both").weight_factor("ai") == 1.0
