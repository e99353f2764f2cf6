"""Import: the three line shapes, the real hh-rlhf file, and every malformed file writing nothing."""
import hashlib
import io
import json
from pathlib import Path

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from annotation.errors import ImportRejected, NotAllowed
from annotation.importers import ImportFileRejected, LineInvalid, hh_dialogue_split, import_samples_from_file
from annotation.models import Membership, PairwiseComparison, Project, Prompt, Ranking, RankingEntry, Round, Sample

HH_FILE = Path(__file__).resolve().parents[2] / "data" / "hh_rlhf" / "hh_rlhf_harmless_1k.jsonl"


def jsonl(*records) -> io.BytesIO:
    return io.BytesIO("".join(json.dumps(r) + "\n" for r in records).encode())


def hh(shared: str, chosen: str, rejected: str) -> dict:
    return {"chosen": f"{shared}\n\nAssistant: {chosen}", "rejected": f"{shared}\n\nAssistant: {rejected}"}


def row_counts() -> tuple[int, ...]:
    models = (Project, Round, Prompt, Sample, Ranking, RankingEntry, PairwiseComparison, Membership)
    return tuple(m.objects.count() for m in models)


# ------------------------------------------------------------------ pure helpers


def test_hh_dialogue_split_maps_roles_and_strips_the_separator_space():
    turns = hh_dialogue_split("\n\nHuman: hi\n\nAssistant: hello\n\nHuman: bye\n\nAssistant: ", where="x")
    assert turns == [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "bye"}, {"role": "assistant", "content": ""},
    ]


def test_hh_dialogue_split_rejects_text_that_is_not_a_dialogue():
    with pytest.raises(LineInvalid, match="Human:"):
        hh_dialogue_split("just a sentence", where='"chosen"')


# ------------------------------------------------------------------ successful imports


@pytest.mark.django_db
def test_prompt_and_messages_shapes_create_project_round_prompts_and_samples(make_user):
    alice = make_user("alice")
    stream = jsonl(
        {"prompt": "What is 2+2?", "responses": ["4", "5", "four"], "id": "q1", "model": "m-a"},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         "responses": ["Hello", "Hey", "Yo"], "external_id": 7, "model": ["a", "b", "c"]},
    )
    result = import_samples_from_file(project_slug="math-qa", stream=stream, user=alice, source_name="qa.jsonl")

    assert (result.prompts, result.samples, result.rankings, result.pairs) == (2, 6, 0, 0)
    assert result.created_project and result.round_number == 1 and not result.already_imported
    project = Project.objects.get(slug="math-qa")
    assert (project.k, project.name, project.created_by) == (3, "Math Qa", alice)
    assert Membership.objects.get(project=project, user=alice).role == Membership.Role.RESEARCHER
    rnd = Round.objects.get(project=project)
    assert rnd.status == Round.Status.OPEN and rnd.source.startswith("qa.jsonl sha256:")
    first, second = Prompt.objects.filter(project=project).order_by("id")
    assert first.messages == [{"role": "user", "content": "What is 2+2?"}] and first.external_id == "q1"
    assert second.messages[0] == {"role": "system", "content": "Be brief."} and second.external_id == "7"
    samples = list(first.samples.order_by("position"))
    assert [s.text for s in samples] == ["4", "5", "four"] and {s.model_name for s in samples} == {"m-a"}
    assert samples[2].text_sha256 == hashlib.sha256(b"four").hexdigest()
    assert [s.model_name for s in second.samples.order_by("position")] == ["a", "b", "c"]
    assert not Ranking.objects.exists()


@pytest.mark.django_db
def test_hh_pair_becomes_closed_round_with_imported_ranking_and_one_pair():
    stream = jsonl(hh("\n\nHuman: How do I pick a lock?\n\nAssistant: Why?\n\nHuman: Locked out.", "Call a locksmith.",
                      "Use a hairpin."))
    result = import_samples_from_file(project_slug="harmless", stream=stream)

    assert (result.prompts, result.samples, result.rankings, result.pairs) == (1, 2, 1, 1)
    prompt = Prompt.objects.get()
    assert [m["role"] for m in prompt.messages] == ["user", "assistant", "user"]
    assert prompt.messages[2]["content"] == "Locked out." and prompt.round.status == Round.Status.CLOSED
    ranking = Ranking.objects.get()
    assert ranking.labeler is None and ranking.source == Ranking.Source.IMPORTED
    assert [(e.sample.text, e.tier) for e in ranking.entries.select_related("sample")] == [
        ("Call a locksmith.", 0), ("Use a hairpin.", 1)]
    pair = PairwiseComparison.objects.get()
    assert (pair.chosen.text, pair.rejected.text, pair.margin, pair.prompt_id) == (
        "Call a locksmith.", "Use a hairpin.", 1, prompt.pk)


@pytest.mark.django_db(transaction=True)  # commits, so PostgreSQL's deferred integrity triggers run too
def test_real_hh_rlhf_file_imports_into_1000_prompts_and_1000_pairs():
    with HH_FILE.open("rb") as stream:
        result = import_samples_from_file(project_slug="hh", stream=stream, source_name=HH_FILE.name)
    assert (result.prompts, result.samples, result.rankings, result.pairs) == (1000, 2000, 1000, 1000)
    assert Prompt.objects.count() == 1000 and PairwiseComparison.objects.filter(margin=1).count() == 1000
    assert Project.objects.get(slug="hh").k == 2
    # every pair prefers position 0 (the chosen reply) and every conversation ends on a user turn
    assert not PairwiseComparison.objects.exclude(chosen__position=0).exists()
    assert all(m[-1]["role"] == "user" for m in Prompt.objects.values_list("messages", flat=True))


@pytest.mark.django_db
def test_same_file_twice_is_idempotent_and_a_new_file_adds_the_next_round(make_project):
    make_project(slug="demo", k=2, prompts=1)
    data = jsonl({"prompt": "p", "responses": ["a", "b"]}).getvalue()
    first = import_samples_from_file(project_slug="demo", stream=io.BytesIO(data))
    before = row_counts()
    again = import_samples_from_file(project_slug="demo", stream=io.BytesIO(data))
    assert row_counts() == before
    assert again.already_imported and (again.round_number, again.prompts, again.samples) == (2, 1, 2)
    assert not first.created_project and first.round_number == 2
    third = import_samples_from_file(project_slug="demo", stream=jsonl({"prompt": "q", "responses": ["a", "b"]}))
    assert third.round_number == 3


@pytest.mark.django_db
def test_non_seekable_stream_is_spooled_and_round_number_is_honoured():
    class Pipe(io.RawIOBase):
        def __init__(self, data: bytes):
            self._data = io.BytesIO(data)

        def readable(self):
            return True

        def readinto(self, buffer):
            chunk = self._data.read(len(buffer))
            buffer[: len(chunk)] = chunk
            return len(chunk)

    pipe = Pipe(jsonl({"prompt": "p", "responses": ["a", "b"]}).getvalue())
    assert not pipe.seekable()
    result = import_samples_from_file(project_slug="piped", stream=pipe, round_number=5)
    assert result.round_number == 5 and result.prompts == 1


@pytest.mark.django_db
def test_labeler_may_not_import_into_a_project(make_user, make_project):
    bob = make_user("bob")
    make_project(slug="demo", k=2, labelers=[bob])
    before = row_counts()
    with pytest.raises(NotAllowed):
        import_samples_from_file(project_slug="demo", stream=jsonl({"prompt": "p", "responses": ["a", "b"]}), user=bob)
    assert row_counts() == before


# ------------------------------------------------------------------ rejected files write nothing

GOOD = {"prompt": "p", "responses": ["a", "b"]}
SHARED = "\n\nHuman: hi"
BAD_FILES = {
    "invalid json": (b'{"prompt": "p", "responses": ["a", "b"]\n', "line 1", "invalid JSON"),
    "not an object": (b'["p", "a", "b"]\n', "line 1", "must be a JSON object"),
    "missing responses": (jsonl(GOOD, {"prompt": "p"}).getvalue(), "line 2", "missing field 'responses'"),
    "wrong type": (jsonl(GOOD, {"prompt": 3, "responses": ["a", "b"]}).getvalue(), "line 2", '"prompt" must be a string'),
    "one response": (jsonl({"prompt": "p", "responses": ["a"]}).getvalue(), "line 1", "2 to 16 responses, got 1"),
    "too many responses": (jsonl({"prompt": "p", "responses": [str(i) for i in range(17)]}).getvalue(), "line 1",
                           "2 to 16 responses, got 17"),
    "duplicate responses": (jsonl({"prompt": "p", "responses": ["a", "b", "a"]}).getvalue(), "line 1",
                            "responses[2] repeats responses[0]"),
    "mixed K": (jsonl(GOOD, GOOD, {"prompt": "p", "responses": ["a", "b", "c"]}).getvalue(), "line 3",
                "has 3 responses but line 1 has 2"),
    "empty prompt": (jsonl({"prompt": "  ", "responses": ["a", "b"]}).getvalue(), "line 1", '"prompt" is empty'),
    "empty response": (jsonl({"prompt": "p", "responses": ["a", ""]}).getvalue(), "line 1", "responses[1] is empty"),
    "unknown role": (jsonl({"messages": [{"role": "bot", "content": "x"}], "responses": ["a", "b"]}).getvalue(),
                     "line 1", "messages[0].role must be one of"),
    "ends on assistant": (jsonl({"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
                                 "responses": ["a", "b"]}).getvalue(), "line 1", "must end with a user turn"),
    "unknown field": (jsonl({**GOOD, "score": 3}).getvalue(), "line 1", "unknown field 'score'"),
    "no shared prefix": (jsonl({"chosen": "\n\nHuman: a\n\nAssistant: x", "rejected": "\n\nHuman: b\n\nAssistant: y"})
                         .getvalue(), "line 1", "differ at turn 1"),
    "same final reply": (jsonl(hh(SHARED, "same", "same")).getvalue(), "line 1", "repeats"),
    "not a dialogue": (jsonl({"chosen": "good", "rejected": "bad"}).getvalue(), "line 1", "Human:"),
    "ranked and unranked": (jsonl(GOOD, hh(SHARED, "x", "y")).getvalue(), "line 2", "mixes ranked"),
    "wrong encoding": ('{"prompt": "café", "responses": ["a", "b"]}\n'.encode("latin-1"), "line 1", "not valid UTF-8"),
    "NUL character": (jsonl({"prompt": "p\u0000", "responses": ["a", "b"]}).getvalue(), "line 1", "NUL"),
    "lone surrogate": (b'{"prompt": "\\ud800", "responses": ["a", "b"]}\n', "line 1", "surrogate"),
    "empty file": (b"\n  \n", "line 1", "no records"),
}


@pytest.mark.django_db
@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_malformed_file_is_rejected_naming_line_and_problem_and_writes_nothing(case):
    data, location, fragment = BAD_FILES[case]
    with pytest.raises(ImportRejected) as caught:
        import_samples_from_file(project_slug="new-project", stream=io.BytesIO(data))
    assert caught.value.location == location and fragment in caught.value.message
    assert row_counts() == (0,) * 8


@pytest.mark.django_db
def test_oversized_line_is_rejected_and_later_lines_still_checked(settings):
    settings.IMPORT_MAX_LINE_BYTES = 64
    data = jsonl({"prompt": "x" * 100, "responses": ["a", "b"]}, {"prompt": "p", "responses": ["a"]}).getvalue()
    with pytest.raises(ImportFileRejected) as caught:
        import_samples_from_file(project_slug="p", stream=io.BytesIO(data))
    assert caught.value.problems == [("line 1", "line is longer than 64 bytes"),
                                     ("line 2", '"responses" must hold 2 to 16 responses, got 1')]
    assert row_counts() == (0,) * 8


@pytest.mark.django_db
def test_many_problems_are_reported_together_up_to_a_limit():
    data = b"".join(b"nope\n" if i % 2 else b'{"prompt": "p", "responses": ["a", "b"]}\n' for i in range(60))
    with pytest.raises(ImportFileRejected) as caught:
        import_samples_from_file(project_slug="p", stream=io.BytesIO(data))
    problems = caught.value.problems
    assert len(problems) == 20 and problems[0][0] == "line 2" and problems[-1][0] == "line 40"
    assert "line 4: invalid JSON" in str(caught.value) and "stopped after 20 problems" in str(caught.value)


@pytest.mark.django_db
def test_k_mismatch_with_existing_project_and_taken_round_write_nothing(make_project):
    make_project(slug="demo", k=4, prompts=1)
    before = row_counts()
    with pytest.raises(ImportRejected, match="K=4 responses per prompt; this line has 2"):
        import_samples_from_file(project_slug="demo", stream=jsonl(GOOD))
    with pytest.raises(ImportRejected, match="already has a round 1"):
        import_samples_from_file(project_slug="demo", stream=jsonl({"prompt": "p", "responses": list("abcd")}),
                                 round_number=1)
    with pytest.raises(ImportRejected, match="not a valid project slug"):
        import_samples_from_file(project_slug="no spaces!", stream=jsonl(GOOD))
    assert row_counts() == before


# ------------------------------------------------------------------ management command


@pytest.mark.django_db
def test_import_command_prints_counts_and_fails_with_the_error_lines(tmp_path):
    good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
    good.write_bytes(jsonl(GOOD, {"prompt": "q", "responses": ["c", "d"]}).getvalue())
    bad.write_bytes(b'{"prompt": "p", "responses": ["a", "b"]}\n{oops\n' + jsonl({"prompt": "p"}).getvalue())
    out = io.StringIO()
    call_command("import_samples", str(good), "--project", "cli", stdout=out)
    assert "project cli (new project), round 1: 2 prompts, 4 samples, 0 rankings, 0 pairs" in out.getvalue()
    with pytest.raises(CommandError) as caught:
        call_command("import_samples", str(bad), "--project", "cli", "--round", "2")
    assert "line 2: invalid JSON" in str(caught.value) and "line 3: missing field 'responses'" in str(caught.value)
    assert Round.objects.filter(project__slug="cli").count() == 1
