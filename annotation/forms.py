"""Forms of the labelling pages: parse untrusted POST data into plain values for the services.

The ranking form accepts either a `tiers` JSON field (what the page's script sends) or one
`rank_<sample id>` field per response (what the page sends without JavaScript: equal ranks are a tie).
Coverage of the prompt's samples is checked by `ranking_submit`, not here.
"""
import re

from django import forms
from django.http import QueryDict

from annotation.errors import InvalidInput, RankingInvalid
from annotation.limits import json_loads_bounded
from annotation.models import RankingEntry
from annotation.provenance import CHOICE_LABELS, DEFAULT_CHOICE, source_selection_parse

_RANK_FIELD = re.compile(r"^rank_(\d{1,18})$")
_FLAG_FIELD = re.compile(r"^flag_(\d{1,18})$")
FORM_TIME_SPENT_CAP_MS = 24 * 3600 * 1000  # a form's reported time counts one day at most (a tab left open)
MAX_TIERS_JSON_CHARS = 20_000
EXPORT_FORMATS = [("pairs", "pairs (TRL preference)"), ("conversational", "conversational"), ("rankings", "rankings")]
FILE_FORMATS = [("jsonl", "JSONL"), ("parquet", "Parquet")]


def _tiers_from_json(raw: str) -> list:
    if len(raw) > MAX_TIERS_JSON_CHARS:
        raise RankingInvalid("tiers field is too long", location="tiers")
    try:
        tiers = json_loads_bounded(raw)
    except ValueError as exc:
        raise RankingInvalid(f"tiers is not valid JSON ({exc.msg})", location="tiers") from None
    if not isinstance(tiers, list):
        raise RankingInvalid("tiers must be a JSON list of lists of sample ids", location="tiers")
    return tiers


def _tiers_from_rank_fields(data: QueryDict) -> list[list[int]]:
    """`rank_12=1, rank_13=1, rank_14=2` → [[12, 13], [14]]; ranks may leave gaps (1, 1, 3)."""
    by_rank: dict[int, list[int]] = {}
    for key in data:
        match = _RANK_FIELD.match(key)
        if not match:
            continue
        value = data.get(key, "").strip()
        if not value:
            raise RankingInvalid("this response has no rank yet; rank every response", location=key)
        if not value.isdigit() or not 1 <= int(value) <= 64:
            raise RankingInvalid(f"rank must be a number from 1 up, got {value[:20]!r}", location=key)
        by_rank.setdefault(int(value), []).append(int(match.group(1)))
    if not by_rank:
        raise RankingInvalid("no ranking was sent", location="tiers")
    return [sorted(by_rank[rank]) for rank in sorted(by_rank)]


def ranking_payload_from_post(data: QueryDict) -> dict:
    """POST data → {"tiers", "flags", "time_spent_ms", "comment", "all_bad"} for `ranking_submit` and
    `ranking_replace`; RankingInvalid on bad input (the comment's length is checked by the services)."""
    raw_tiers = data.get("tiers", "").strip()
    tiers = _tiers_from_json(raw_tiers) if raw_tiers else _tiers_from_rank_fields(data)
    flags: dict[int, list[str]] = {}
    for key in data:
        match = _FLAG_FIELD.match(key)
        if match:
            flags[int(match.group(1))] = data.getlist(key)
    raw_time = data.get("time_spent_ms", "0").strip() or "0"
    if not raw_time.isdigit():
        raise RankingInvalid(f"time spent must be a whole number of milliseconds, got {raw_time[:20]!r}",
                             location="time_spent_ms")
    raw_all_bad = data.get("all_bad", "").strip().lower()
    if raw_all_bad not in ("", "on", "1", "true"):
        raise RankingInvalid(f"all_bad must be on or absent, got {raw_all_bad[:20]!r}", location="all_bad")
    return {"tiers": tiers, "flags": flags, "time_spent_ms": min(int(raw_time), FORM_TIME_SPENT_CAP_MS),
            "comment": data.get("comment", ""), "all_bad": bool(raw_all_bad)}


class SkipForm(forms.Form):
    REASONS = [
        ("", "Choose a reason…"),
        ("cannot_judge", "I cannot judge this topic"),
        ("prompt_broken", "The prompt is broken or empty"),
        ("responses_identical", "The responses are practically identical"),
        ("other", "Other (explain below)"),
    ]
    reason = forms.ChoiceField(choices=REASONS, required=False)
    detail = forms.CharField(max_length=400, required=False, strip=True)

    def clean(self) -> dict:
        data = super().clean()
        reason, detail = data.get("reason") or "", data.get("detail") or ""
        if not reason and not detail:
            raise forms.ValidationError("Give a reason for skipping this prompt.")
        if reason == "other" and not detail:
            self.add_error("detail", "Explain the reason when you choose Other.")
        labels = dict(self.REASONS)
        data["text"] = (f"{labels[reason]}: {detail}" if reason and detail else detail or labels[reason])[:500]
        return data


class ImportForm(forms.Form):
    file = forms.FileField(help_text="JSONL: prompt/messages + responses, or hh-rlhf chosen/rejected.")
    round_number = forms.IntegerField(required=False, min_value=1, label="Round (optional)")


class ExportForm(forms.Form):
    """Export parameters; each has a default (pairs, jsonl, all rounds, human only), as the schema says."""

    format = forms.ChoiceField(choices=EXPORT_FORMATS, initial="pairs", required=False)
    file_format = forms.ChoiceField(choices=FILE_FORMATS, initial="jsonl", required=False)
    round = forms.IntegerField(required=False, min_value=1)
    sources = forms.ChoiceField(choices=list(CHOICE_LABELS.items()), initial=DEFAULT_CHOICE, required=False,
                                label="Sources", help_text="Which rankings: human only unless you choose otherwise.")
    include_arena = forms.BooleanField(required=False, label="Include arena votes")
    ai_weight = forms.FloatField(required=False, label="AI pair weight", help_text="Only for 'weighted' (default 0.5).")

    def clean_format(self) -> str:
        return self.cleaned_data.get("format") or "pairs"

    def clean_file_format(self) -> str:
        return self.cleaned_data.get("file_format") or "jsonl"

    def clean(self) -> dict:
        data = super().clean()
        if self.errors:
            return data
        try:
            data["selection"] = source_selection_parse(
                choice=data.get("sources"), include_arena=data.get("include_arena") or False,
                ai_weight=data.get("ai_weight"))
        except InvalidInput as exc:
            self.add_error(exc.location if exc.location in self.fields else None, exc.message)
        return data


FLAG_CHOICES = RankingEntry.Flag.choices
