"""Export: the three formats as JSONL and Parquet, the round filter, laziness, and the command."""
import inspect
import io
import json

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation import exporters
from annotation.errors import InvalidInput
from annotation.exporters import export_preferences, render_plain_prompt
from annotation.importers import import_samples_from_file
from annotation.models import PairwiseComparison, Prompt, Ranking, RankingEntry, Round
from preferences.tiers import pairs_from_tiers

PAIR_FIELDS = {"prompt", "chosen", "rejected", "tier_distance", "weight", "labeler", "source", "round", "prompt_id",
               "ranking_id", "chosen_id", "rejected_id"}


def rank(prompt: Prompt, *, tiers_by_position: list[list[int]], labeler=None, flags=None, shown=None) -> Ranking:
    """Write a ranking and its pairs directly (positions -> sample ids), as the ranking service would."""
    ids = list(prompt.samples.order_by("position").values_list("id", flat=True))
    tiers = [[ids[p] for p in tier] for tier in tiers_by_position]
    shown = [ids[p] for p in (shown or range(len(ids)))]
    ranking = Ranking.objects.create(prompt=prompt, labeler=labeler, time_spent_ms=4200,
                                     source=Ranking.Source.HUMAN if labeler else Ranking.Source.IMPORTED)
    for t, tier in enumerate(tiers):
        for sample_id in tier:
            RankingEntry.objects.create(ranking=ranking, sample_id=sample_id, tier=t, shown_position=shown.index(sample_id),
                                        flags=(flags or {}).get(ids.index(sample_id), []))
    for chosen, rejected, margin in pairs_from_tiers(tiers):
        PairwiseComparison.objects.create(ranking=ranking, prompt=prompt, chosen_id=chosen, rejected_id=rejected,
                                          margin=margin)
    return ranking


@pytest.fixture
def ranked(make_project, make_user):
    """K=3 project: round 1 has two prompts ranked by alice (one with a tie), round 2 one prompt ranked by bob."""
    alice, bob = make_user("alice"), make_user("bob")
    project = make_project(slug="demo", k=3, prompts=2, labelers=[alice, bob])
    first, second = project.prompts.order_by("id")
    rank(first, tiers_by_position=[[2], [0], [1]], labeler=alice, flags={1: ["unsafe"]}, shown=[1, 2, 0])
    tied = rank(second, tiers_by_position=[[0, 1], [2]], labeler=alice)  # a tie: 2 pairs, not 3
    Ranking.objects.filter(pk=tied.pk).update(comment='<script>x</script> "too long"', all_bad=True)
    import_samples_from_file(project_slug="demo", stream=io.BytesIO(
        b'{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],'
        b' "responses": ["Hello", "Hey", "Yo"]}\n'))
    rank(project.prompts.get(round__number=2), tiers_by_position=[[1], [2], [0]], labeler=bob)
    return project


def read(project, fmt, file_format="jsonl", round_number=None) -> list[dict]:
    data = b"".join(export_preferences(project=project, fmt=fmt, file_format=file_format, round_number=round_number))
    if file_format == "parquet":
        return pq.read_table(io.BytesIO(data)).to_pylist()
    return [json.loads(line) for line in data.decode().splitlines()]


def test_render_plain_prompt_is_hh_rlhf_text_ending_on_the_assistant_cue():
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}]
    assert render_plain_prompt(messages) == "\n\nSystem: S\n\nHuman: Q\n\nAssistant:"


@pytest.mark.django_db
def test_pairs_jsonl_is_trl_standard_preference_format_with_metadata(ranked):
    rows = read(ranked, "pairs")
    assert len(rows) == 3 + 2 + 3 == PairwiseComparison.objects.count()
    assert all(set(row) == PAIR_FIELDS for row in rows)
    first = rows[0]
    assert first["prompt"] == "\n\nHuman: Question 0?\n\nAssistant:"
    assert (first["chosen"], first["rejected"]) == (" Answer 2 to question 0.", " Answer 0 to question 0.")
    assert [r["tier_distance"] for r in rows[:3]] == [1, 2, 1]
    assert {r["labeler"] for r in rows} == {"alice", "bob"} and {r["round"] for r in rows} == {1, 2}
    assert all(r["weight"] == 1.0 and r["source"] == "human" for r in rows)
    assert "margin" not in first  # deliberately: TRL's RewardTrainer would put it into its loss


@pytest.mark.django_db
def test_conversational_jsonl_has_message_lists(ranked):
    rows = read(ranked, "conversational", round_number=2)
    assert len(rows) == 3 and all(set(r) == PAIR_FIELDS for r in rows)
    assert rows[0]["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    assert rows[0]["chosen"] == [{"role": "assistant", "content": "Hey"}]
    assert rows[0]["rejected"] == [{"role": "assistant", "content": "Yo"}]


@pytest.mark.django_db
def test_rankings_jsonl_is_lossless(ranked):
    rows = read(ranked, "rankings")
    assert [r["round"] for r in rows] == [1, 1, 2]
    first, tied = rows[0], rows[1]
    assert [[s["text"] for s in tier] for tier in first["tiers"]] == [
        ["Answer 2 to question 0."], ["Answer 0 to question 0."], ["Answer 1 to question 0."]]
    ids = {s["text"][7]: s["sample_id"] for tier in first["tiers"] for s in tier}
    assert first["shown_order"] == [ids["1"], ids["2"], ids["0"]]
    assert first["flags"] == [{"sample_id": ids["1"], "flags": ["unsafe"]}]
    assert (first["time_spent_ms"], first["labeler"], first["source"]) == (4200, "alice", "human")
    assert (first["comment"], first["all_bad"]) == ("", False)
    assert (tied["comment"], tied["all_bad"]) == ('<script>x</script> "too long"', True)  # as typed: escaping is the reader's
    assert first["messages"] == [{"role": "user", "content": "Question 0?"}]
    assert [len(tier) for tier in tied["tiers"]] == [2, 1] and tied["flags"] == []
    assert all(s["model"] == "fixture" for tier in first["tiers"] for s in tier)


@pytest.mark.django_db
@pytest.mark.parametrize("fmt", ["pairs", "conversational", "rankings"])
def test_parquet_holds_the_same_rows_as_jsonl(ranked, fmt, monkeypatch):
    monkeypatch.setattr(exporters, "CHUNK_ROWS", 2)  # several row groups
    assert read(ranked, fmt, "parquet") == read(ranked, fmt, "jsonl")
    data = b"".join(export_preferences(project=ranked, fmt=fmt, file_format="parquet"))
    assert pq.ParquetFile(io.BytesIO(data)).num_row_groups > 1


@pytest.mark.django_db
def test_round_filter_and_bad_arguments(ranked):
    assert {r["round"] for r in read(ranked, "pairs", round_number=1)} == {1}
    assert len(read(ranked, "rankings", "parquet", round_number=2)) == 1
    with pytest.raises(InvalidInput, match="no round 9"):
        export_preferences(project=ranked, fmt="pairs", file_format="jsonl", round_number=9)
    with pytest.raises(InvalidInput, match="unknown format 'csv'"):
        export_preferences(project=ranked, fmt="csv", file_format="jsonl")
    with pytest.raises(InvalidInput, match="unknown file format 'xlsx'"):
        export_preferences(project=ranked, fmt="pairs", file_format="xlsx")


@pytest.mark.django_db
def test_export_is_a_lazy_stream_of_chunks(ranked, monkeypatch, django_assert_num_queries):
    monkeypatch.setattr(exporters, "YIELD_BYTES", 1)  # one chunk per row
    with django_assert_num_queries(0):
        chunks = export_preferences(project=ranked, fmt="pairs", file_format="jsonl")
    assert inspect.isgenerator(chunks)
    first = next(chunks)
    assert json.loads(first)["tier_distance"] == 1
    assert len([first, *chunks]) == PairwiseComparison.objects.count()


@pytest.mark.django_db
def test_empty_round_gives_an_empty_jsonl_and_a_valid_empty_parquet(make_project):
    project = make_project(slug="empty", k=2, prompts=1)
    assert b"".join(export_preferences(project=project, fmt="pairs", file_format="jsonl")) == b""
    data = b"".join(export_preferences(project=project, fmt="conversational", file_format="parquet"))
    table = pq.read_table(io.BytesIO(data))
    assert table.num_rows == 0 and "tier_distance" in table.column_names


@pytest.mark.django_db
def test_hh_import_exports_back_to_the_same_dialogues():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Help me?\n\nAssistant: Sure."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Help me?\n\nAssistant: No."
    import_samples_from_file(project_slug="hh", stream=io.BytesIO(json.dumps({"chosen": chosen, "rejected": rejected})
                                                                  .encode()))
    from annotation.models import Project
    (row,) = read(Project.objects.get(slug="hh"), "pairs")
    assert row["prompt"] + row["chosen"] == chosen and row["prompt"] + row["rejected"] == rejected
    assert row["labeler"] is None and row["source"] == "imported" and row["tier_distance"] == 1


@pytest.mark.django_db
def test_export_command_writes_files_and_stdout(ranked, tmp_path, capfdbinary):
    target = tmp_path / "pairs.parquet"
    call_command("export_preferences", "--project", "demo", "--format", "pairs", "--file-format", "parquet",
                 "--output", str(target), "--round", "1")
    assert pq.read_table(target).num_rows == 5
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.parquet"]  # no partial file left behind
    call_command("export_preferences", "--project", "demo", "--format", "rankings")
    lines = capfdbinary.readouterr().out.decode().splitlines()
    assert len(lines) == 3 and json.loads(lines[0])["labeler"] == "alice"
    with pytest.raises(CommandError, match="no project 'nope'"):
        call_command("export_preferences", "--project", "nope", "--format", "pairs")
    with pytest.raises(CommandError, match="no round 7"):
        call_command("export_preferences", "--project", "demo", "--format", "pairs", "--round", "7")
    assert Round.objects.filter(project=ranked).count() == 2
