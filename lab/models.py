"""Arena: blind side-by-side votes between two policy checkpoints.

An ``Arena`` compares two ``training.ModelArtifact``s on the same prompts. Its prompts live in a round of
their own (status CLOSED, so they never enter the regular labelling queue) with exactly two samples each,
one per checkpoint: an ``ArenaPair`` says which sample came from which model. Every ``ArenaVote`` is also a
``Ranking`` of that K=2 prompt (written through ``annotation.services.ranking_record``), so votes flow into
exports and training like any other preference.

The tables were created by annotation's migration 0004 and keep their names (``annotation_arena``...): lab's
0001 and annotation's 0007 moved the models in Django's state only, so no row was copied.
"""
from django.conf import settings
from django.db import models
from django.db.models import F, Q

from annotation.models import Project, Prompt, Ranking, Round, Sample


class Arena(models.Model):
    class Status(models.TextChoices):
        GENERATING = "generating", "Waiting for responses"
        OPEN = "open", "Open for votes"
        CLOSED = "closed", "Closed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="arenas")
    name = models.CharField(max_length=200, help_text="Shown to researchers only (voters see 'Arena #id').")
    model_a = models.ForeignKey("training.ModelArtifact", on_delete=models.PROTECT, related_name="+")
    model_b = models.ForeignKey("training.ModelArtifact", on_delete=models.PROTECT, related_name="+")
    round = models.OneToOneField(Round, on_delete=models.CASCADE, related_name="arena")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.GENERATING)
    sampling_params = models.JSONField(default=dict, blank=True)
    summary = models.JSONField(default=dict, blank=True, help_text="Prompts written, dropped (identical responses).")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "annotation_arena"
        ordering = ["-created_at", "-id"]
        constraints = [models.CheckConstraint(condition=~Q(model_a=F("model_b")), name="arena_two_models")]

    def __str__(self) -> str:
        return f"arena {self.pk} of {self.project.slug}"


class ArenaPair(models.Model):
    """One arena prompt: its sample from model A and its sample from model B (positions drawn at random)."""

    arena = models.ForeignKey(Arena, on_delete=models.CASCADE, related_name="pairs")
    prompt = models.OneToOneField(Prompt, on_delete=models.CASCADE, related_name="arena_pair")
    sample_a = models.OneToOneField(Sample, on_delete=models.CASCADE, related_name="+")
    sample_b = models.OneToOneField(Sample, on_delete=models.CASCADE, related_name="+")

    class Meta:
        db_table = "annotation_arenapair"
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=~Q(sample_a=F("sample_b")), name="arena_pair_two_samples")]


class ArenaVote(models.Model):
    """One voter's verdict on one pair. ``both_bad`` is stored as a tie in the ranking (no training pair)."""

    class Outcome(models.TextChoices):
        A = "a", "Model A better"
        B = "b", "Model B better"
        TIE = "tie", "Tie"
        BOTH_BAD = "both_bad", "Both bad"

    pair = models.ForeignKey(ArenaPair, on_delete=models.CASCADE, related_name="votes")
    voter = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    outcome = models.CharField(max_length=16, choices=Outcome.choices)
    left_sample = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="+",
                                    help_text="The response shown on the left (order drawn per voter and pair).")
    ranking = models.OneToOneField(Ranking, on_delete=models.CASCADE, related_name="arena_vote")
    time_spent_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "annotation_arenavote"
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["pair", "voter"], name="arena_vote_once_per_voter")]
