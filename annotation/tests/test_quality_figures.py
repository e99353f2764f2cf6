"""The report's figures over ranking records, without a database."""
from datetime import datetime, timezone

from annotation.quality.figures import RankingRecord, agreement_summary, review_queue, timeline


def _record(ranking_id, prompt_id, labeler_id, tiers, *, day=1, source="human"):
    return RankingRecord(ranking_id=ranking_id, prompt_id=prompt_id, round_number=1, labeler_id=labeler_id,
                         labeler=f"l{labeler_id}", source=source, tiers=tiers, shown={s: s for s in tiers},
                         time_spent_ms=1000, created_at=datetime(2026, 1, day, tzinfo=timezone.utc), excluded=False)


FORWARD, REVERSED = {1: 0, 2: 1, 3: 2}, {1: 2, 2: 1, 3: 0}
RECORDS = [
    _record(1, 10, 1, FORWARD), _record(2, 10, 2, REVERSED, day=2),  # prompt 10: the two labelers disagree
    _record(3, 20, 1, FORWARD), _record(4, 20, 2, FORWARD),  # prompt 20: they agree
    _record(5, 20, None, REVERSED, source="imported"),  # no labeler: counts in no agreement figure
]


def test_agreement_summary_compares_labelled_rankings_of_the_same_prompt():
    summary = agreement_summary(RECORDS)
    assert summary["rankings"] == 4 and summary["comparisons"] == 2
    assert summary["pairwise_agreement"] == 0.5 and summary["kendall_tau_b"] == 0.0


def test_review_queue_holds_disagreeing_prompts_unless_reviewed_or_gold():
    assert review_queue(records=RECORDS, threshold=0.5, reviewed=set()) == [
        {"prompt_id": 10, "rankings": 2, "agreement": 0.0}]
    assert review_queue(records=RECORDS, threshold=0.5, reviewed={10}) == []
    assert review_queue(records=RECORDS, threshold=0.5, reviewed=set(), gold={10}) == []


def test_timeline_dates_a_ranking_pair_by_its_later_ranking():
    assert timeline(RECORDS) == {"day": ["2026-01-01", "2026-01-02"], "pairwise_agreement": [1.0, 0.0],
                                 "comparisons": [1, 1]}
