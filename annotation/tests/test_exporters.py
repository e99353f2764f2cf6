"""Export: the three formats as JSONL and Parquet, the round filter, laziness, and the command."""
import inspect
import io
import json
import threading

import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection, transaction

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
    return build_ranked(make_project, make_user)


@pytest.fixture
def ranked_committed(make_project, make_user):
    """``ranked``, written in one transaction (each ranking must be complete when a transaction commits)."""
    with transaction.atomic():
        return build_ranked(make_project, make_user)


def build_ranked(make_project, make_user):
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


# ------------------------------------------------------------------ read-ahead: the database side in its own thread
READER = "export-read-ahead"


def _reader_alive() -> bool:
    return any(t.name == READER for t in threading.enumerate())


def _connections_to_this_database() -> int:
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")
        return cursor.fetchone()[0]


@pytest.fixture
def small_chunks(monkeypatch):
    """Many chunks from a small project: 2 pairs and 1 ranking per database chunk, 1 chunk read ahead."""
    monkeypatch.setattr(exporters, "EXPORT_CHUNK_PAIRS", 2)
    monkeypatch.setattr(exporters, "CHUNK_ROWS", 1)
    monkeypatch.setattr(exporters, "READ_AHEAD_CHUNKS", 1)


@pytest.fixture
def reader_threads(monkeypatch):
    """The names of the threads that read each database chunk."""
    names = []
    for name in ("_with_texts", "_with_entries"):
        real = getattr(exporters, name)

        def spy(chunk, real=real):
            names.append(threading.current_thread().name)
            return real(chunk)
        monkeypatch.setattr(exporters, name, spy)
    return names


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the read-ahead thread runs on PostgreSQL only")
@pytest.mark.django_db(transaction=True)  # committed rows: the reader's own connection must see them
@pytest.mark.parametrize("fmt", exporters.FORMATS)
@pytest.mark.parametrize("file_format", exporters.FILE_FORMATS)
def test_read_ahead_export_is_byte_for_byte_the_in_transaction_export(ranked_committed, small_chunks, reader_threads, fmt,
                                                                       file_format):
    ahead = b"".join(export_preferences(project=ranked_committed, fmt=fmt, file_format=file_format))
    read_by_reader = list(reader_threads)
    reader_threads.clear()
    with transaction.atomic():  # a caller's transaction: read here, on the caller's connection
        inline = b"".join(export_preferences(project=ranked_committed, fmt=fmt, file_format=file_format))
    assert ahead == inline and ahead
    assert len(read_by_reader) >= 2 and set(read_by_reader) == {READER}  # several chunks, all read by the reader
    assert set(reader_threads) == {threading.current_thread().name}
    assert not _reader_alive()


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the read-ahead thread runs on PostgreSQL only")
@pytest.mark.django_db(transaction=True)
def test_an_error_while_reading_ahead_reaches_the_consumer_and_the_reader_ends(ranked_committed, small_chunks, monkeypatch):
    real = exporters._with_texts
    calls = []

    def fails_second_time(chunk):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("the database went away")
        return real(chunk)
    monkeypatch.setattr(exporters, "_with_texts", fails_second_time)
    before = _connections_to_this_database()
    chunks = export_preferences(project=ranked_committed, fmt="pairs", file_format="jsonl")
    with pytest.raises(RuntimeError, match="the database went away"):
        b"".join(chunks)
    assert not _reader_alive() and _connections_to_this_database() == before


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the read-ahead thread runs on PostgreSQL only")
@pytest.mark.django_db(transaction=True)
def test_a_client_that_goes_away_stops_the_reader_and_frees_its_connection(ranked_committed, small_chunks, monkeypatch):
    monkeypatch.setattr(exporters, "YIELD_BYTES", 1)  # one piece per pair
    before = _connections_to_this_database()
    chunks = export_preferences(project=ranked_committed, fmt="pairs", file_format="jsonl")
    assert json.loads(next(chunks))["tier_distance"] >= 1
    assert _reader_alive()  # reading ahead, blocked on the full hand-over queue
    chunks.close()  # what the WSGI server does when the download is cancelled
    assert not _reader_alive() and _connections_to_this_database() == before


@pytest.mark.django_db
@pytest.mark.parametrize("pairs_per_chunk", [1, 3, 10_000])
def test_pairs_come_in_ranking_order_each_rankings_pairs_together(ranked, monkeypatch, pairs_per_chunk):
    """A corrected ranking keeps its place: rows follow the ranking ids, not the pair ids, and a chunk boundary
    never splits a ranking or changes the order."""
    monkeypatch.setattr(exporters, "EXPORT_CHUNK_PAIRS", pairs_per_chunk)
    first = Ranking.objects.order_by("id").first()
    pairs = list(PairwiseComparison.objects.filter(ranking=first).order_by("id").values(
        "prompt_id", "chosen_id", "rejected_id", "margin"))
    PairwiseComparison.objects.filter(ranking=first).delete()  # written again: now the newest pair ids
    PairwiseComparison.objects.bulk_create([PairwiseComparison(ranking=first, **p) for p in pairs])
    rows = read(ranked, "pairs")
    expected = list(PairwiseComparison.objects.order_by("ranking_id", "id").values_list("ranking_id", "id"))
    assert [(r["ranking_id"], r["chosen_id"], r["rejected_id"]) for r in rows] == [
        (ranking_id, *PairwiseComparison.objects.filter(pk=pk).values_list("chosen_id", "rejected_id").get())
        for ranking_id, pk in expected]
    assert rows[0]["ranking_id"] == first.pk and len(rows) == len(expected) == 8
