"""AI labelers rank through the same service as humans, are marked as AI, and are measured against humans."""
import json
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from lab.ai_labelers.services import ai_labeler_create, ai_labeler_run
from lab.scorers import llm_judge_scorer, reward_model_scorer
from annotation.errors import InvalidInput
from annotation.exporters import export_preferences
from annotation.models import Ranking
from annotation.quality.models import AILabeler
from annotation.provenance import source_selection_parse
from annotation.quality.selectors import quality_report
from annotation.selectors import project_progress
from annotation.services import assignment_next_for_labeler
from annotation.tests.test_quality_services import rank_all


def answer_number(prompt_messages, response_text):
    return float(response_text.split()[1])


def reversed_answer_number(prompt_messages, response_text):
    return -answer_number(prompt_messages, response_text)


@pytest.fixture(autouse=True)
def registered(settings):
    """The operator registers this module's scorers by name (users pick names, never module:function)."""
    settings.RLHF_HOOKS = {"utility": {"answer-number": f"{__name__}:answer_number",
                                       "reversed": f"{__name__}:reversed_answer_number"}}


def test_ai_labeler_ranks_as_ai_and_is_compared_with_humans(make_user, make_project):
    alice = make_user("alice")
    project = make_project(slug="rlaif", k=4, overlap=3, prompts=4, labelers=[alice])
    rank_all(project, alice)
    good = ai_labeler_create(project=project, name="rules", kind="utility", spec="answer-number")
    bad = ai_labeler_create(project=project, name="contrarian", kind="utility",
                            spec="reversed")
    assert ai_labeler_run(labeler=good) == {"labeler": "ai-rules@rlaif", "rankings": 4, "pairs": 24, "reason": (
        "it has already ranked all 4 (non-gold) prompts of the open rounds")}
    assert ai_labeler_run(labeler=bad, max_prompts=2)["rankings"] == 2
    assert set(Ranking.objects.filter(labeler=good.user).values_list("source", flat=True)) == {"ai"}
    assert not good.user.has_usable_password()
    rows = {row["labeler"]: row for row in quality_report(project=project)["labelers"]}
    assert rows["ai-rules@rlaif"]["agreement_with_humans"] == 1.0 and rows["ai-rules@rlaif"]["source"] == "ai"
    assert rows["ai-contrarian@rlaif"]["agreement_with_humans"] == 0.0
    exported = [json.loads(line) for line in b"".join(export_preferences(project=project, fmt="pairs",
                                                                         file_format="jsonl")).splitlines()]
    assert exported and {row["source"] for row in exported} == {"human"}  # default: human only
    chosen = [json.loads(line) for line in b"".join(export_preferences(
        project=project, fmt="pairs", file_format="jsonl", selection=source_selection_parse(choice="ai"))).splitlines()]
    assert {row["labeler"] for row in chosen} == {"ai-rules@rlaif", "ai-contrarian@rlaif"}
    assert {row["source"] for row in chosen} == {"ai"}
    assert ai_labeler_run(labeler=good)["rankings"] == 0  # nothing left: idempotent


def test_ai_labelers_take_no_human_slot_and_say_why_they_stop(make_user, make_project):
    alice, bob = make_user("alice"), make_user("bob")
    project = make_project(slug="full", k=3, overlap=1, prompts=3, labelers=[alice])
    rank_all(project, alice)  # every human slot is filled
    rules = ai_labeler_create(project=project, name="rules", kind="utility", spec="answer-number")
    result = ai_labeler_run(labeler=rules)
    assert result["rankings"] == 3 and "already ranked all 3" in result["reason"]
    assert project_progress(project=project)["slots_filled"] == 3  # the AI's rankings fill no slot
    other = make_project(slug="other", k=3, overlap=1, prompts=2, labelers=[bob])
    twin = ai_labeler_create(project=other, name="rules", kind="utility", spec="answer-number")
    assert twin.user != rules.user and twin.user.username == "ai-rules@other"  # names are per project
    first = ai_labeler_run(labeler=twin, max_prompts=1)
    assert first["rankings"] == 1 and first["reason"] == ""
    lease = assignment_next_for_labeler(project=other, labeler=bob)  # the AI's ranking left bob's slot free
    assert lease is not None and lease.prompt_id == Ranking.objects.get(labeler=twin.user).prompt_id
    empty = make_project(slug="empty", k=3, prompts=0)
    idle = ai_labeler_create(project=empty, name="rules", kind="utility", spec="answer-number")
    assert "no open (non-gold) prompts" in ai_labeler_run(labeler=idle)["reason"]


def test_ai_labeler_validation_writes_nothing(make_user, make_project, tmp_path):
    project = make_project(slug="v", k=2, prompts=1)
    for kwargs, where in (({"name": "Bad Name", "kind": "utility", "spec": "answer-number"}, "name"),
                          ({"name": "x", "kind": "oracle", "spec": "x"}, "kind"),
                          ({"name": "x", "kind": "utility", "spec": "nope"}, "spec"),
                          ({"name": "x", "kind": "utility", "spec": f"{__name__}:answer_number"}, "spec"),
                          ({"name": "x", "kind": "reward_model", "spec": "999"}, "spec"),
                          ({"name": "x", "kind": "llm_judge", "spec": str(tmp_path)}, "spec")):
        with pytest.raises(InvalidInput) as error:
            ai_labeler_create(project=project, **kwargs)
        assert error.value.location == where
    assert not AILabeler.objects.exists()
    make_user("ai-taken@v")
    with pytest.raises(InvalidInput, match="not this project's AI labeler"):
        ai_labeler_create(project=project, name="taken", kind="utility", spec="answer-number")


def test_scorer_returning_garbage_is_rejected(make_project):
    project = make_project(slug="g", k=3, prompts=1)
    labeler = ai_labeler_create(project=project, name="g", kind="utility", spec="answer-number")
    with pytest.raises(InvalidInput, match="finite numbers"):
        ai_labeler_run(labeler=labeler, scorer=lambda messages, texts: [float("nan")] * len(texts))
    assert not Ranking.objects.exists()


def test_ai_label_command(make_project):
    make_project(slug="cmd", k=3, prompts=2)
    out = StringIO()
    call_command("ai_label", "--project", "cmd", "--name", "rules", "--kind", "utility", "--spec",
                 "answer-number", stdout=out)
    assert "ai-rules@cmd ranked 2 prompts (6 pairs, source ai)" in out.getvalue()
    assert "nothing more to rank: it has already ranked all 2" in out.getvalue()
    with pytest.raises(CommandError, match="not a registered utility hook; choose one of: answer-number, default"):
        call_command("ai_label", "--project", "cmd", "--name", "x", "--kind", "utility", "--spec", "no.such:f")


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from training.ml.tiny_models import build_tiny_causal_lm, build_tiny_reward_model, build_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    tokenizer = build_tokenizer([f"Answer {j} to question {i}. Is the reply helpful Yes No" for i in range(5)
                                 for j in range(4)], root / "tok", vocab_size=300)
    return {"rm": build_tiny_reward_model(root / "rm", tokenizer, hidden=16, layers=1, heads=2),
            "lm": build_tiny_causal_lm(root / "lm", tokenizer, hidden=16, layers=1, heads=2)}


@pytest.mark.slow
def test_model_scorers_rank_through_the_service(make_project, tiny_models, settings):
    settings.RLHF_MODEL_ROOTS = [str(tiny_models["lm"].parent)]  # the operator shares these models
    project = make_project(slug="models", k=3, overlap=2, prompts=2)
    messages = [{"role": "user", "content": "Question 0?"}]
    texts = ["Answer 0 to question 0.", "Answer 1 to question 0.", "Answer 2 to question 0."]
    rm_scores = reward_model_scorer(tiny_models["rm"])(messages, texts)
    judge_scores = llm_judge_scorer(tiny_models["lm"])(messages, texts)
    assert len(rm_scores) == len(judge_scores) == 3 and len(set(rm_scores)) == 3
    assert reward_model_scorer(tiny_models["rm"])(messages, texts) == rm_scores  # deterministic
    judge = ai_labeler_create(project=project, name="judge", kind="llm_judge", spec=str(tiny_models["lm"]))
    assert ai_labeler_run(labeler=judge)["rankings"] == 2
    assert Ranking.objects.filter(labeler=judge.user, source="ai").count() == 2
