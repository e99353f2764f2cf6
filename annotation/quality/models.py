"""Quality control, AI labelers and active selection: the tables they add (migration 0003).

Apart from ``annotation/models.py`` (which imports this module at its end so Django registers them; the
foreign keys here name the core models as "annotation.Project" strings, so this module imports nothing back) so
that the core preference tables stay short. The services that fill ``AILabeler``, ``SelectionRecord`` and
``PromptPriority`` live in lab/ (they may score with a trained model); the queue reads the priorities here.
Nothing here deletes a ranking: an exclusion is a row that exports and training snapshots leave out, and
reliability is a weight on the pairs.
"""
from django.conf import settings
from django.db import models
from django.db.models import Q


class QualitySettings(models.Model):
    """Per-project quality knobs; a project without a row uses the defaults."""

    project = models.OneToOneField("annotation.Project", on_delete=models.CASCADE, related_name="quality_settings")
    gold_rate = models.FloatField(default=0.0, help_text="Chance that a labeler's next task is a gold prompt.")
    review_threshold = models.FloatField(
        default=0.5, help_text="Prompts whose mean pairwise agreement between labelers is below this go to review."
    )
    speed_ratio = models.FloatField(default=0.25, help_text="Flag rankings faster than this × the project's median.")
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(gold_rate__gte=0) & Q(gold_rate__lte=1), name="quality_gold_rate_0_1"),
            models.CheckConstraint(
                condition=Q(review_threshold__gte=0) & Q(review_threshold__lte=1), name="quality_review_threshold_0_1"
            ),
            models.CheckConstraint(condition=Q(speed_ratio__gt=0) & Q(speed_ratio__lte=1), name="quality_speed_ratio"),
        ]


class GoldRanking(models.Model):
    """The known ranking of a gold prompt: tiers of sample ids, best first (``Prompt.is_gold`` is set too)."""

    prompt = models.OneToOneField("annotation.Prompt", on_delete=models.CASCADE, related_name="gold")
    tiers = models.JSONField()
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)


class RankingExclusion(models.Model):
    """A researcher's decision to leave a ranking out of exports and training; the ranking stays stored."""

    ranking = models.OneToOneField("annotation.Ranking", on_delete=models.CASCADE, related_name="exclusion")
    reason = models.CharField(max_length=500)
    excluded_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)


class PromptReview(models.Model):
    """The outcome of reviewing a high-disagreement prompt: adjudicated (with the researcher's tiers) or kept."""

    class Status(models.TextChoices):
        ADJUDICATED = "adjudicated", "Adjudicated"
        KEPT = "kept", "Kept as is"

    prompt = models.OneToOneField("annotation.Prompt", on_delete=models.CASCADE, related_name="review")
    status = models.CharField(max_length=16, choices=Status.choices)
    tiers = models.JSONField(null=True, blank=True, help_text="Adjudicated tiers of sample ids, best first.")
    note = models.CharField(max_length=500, blank=True)
    reviewed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)


class LabelerReliability(models.Model):
    """The last computed reliability of a labeler in a project and the weight written to their pairs."""

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="reliabilities")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    reliability = models.FloatField()
    weight = models.FloatField()
    gold_pairs = models.PositiveIntegerField(default=0)
    gold_agreeing = models.PositiveIntegerField(default=0)
    consensus_pairs = models.PositiveIntegerField(default=0)
    consensus_agreeing = models.PositiveIntegerField(default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "labeler"], name="reliability_unique")]


class AILabeler(models.Model):
    """A user account that is an AI labeler: which scorer ranks for it (see ``lab/ai_labelers/``)."""

    class Kind(models.TextChoices):
        UTILITY = "utility", "Rule-based scorer (registered utility)"
        REWARD_MODEL = "reward_model", "Registered reward model"
        LLM_JUDGE = "llm_judge", "Local LLM judge"

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="ai_labeler")
    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="ai_labelers")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    spec = models.CharField(max_length=500, help_text="module:function, reward artifact id, or judge model directory.")
    tie_threshold = models.FloatField(default=0.0)
    created_at = models.DateTimeField(auto_now_add=True)


class PromptPriority(models.Model):
    """Queue priority of a prompt set by active selection: higher is served first within its round."""

    prompt = models.OneToOneField("annotation.Prompt", on_delete=models.CASCADE, related_name="priority")
    score = models.FloatField()
    selection = models.ForeignKey("SelectionRecord", on_delete=models.CASCADE, related_name="priorities")


class SelectionRecord(models.Model):
    """Which strategy ordered (or chose) a round's prompts, with every prompt's score: the choice, recorded."""

    class Strategy(models.TextChoices):
        RANDOM = "random", "Random"
        UNCERTAINTY = "uncertainty", "Reward-model uncertainty"
        DISAGREEMENT = "disagreement", "Past disagreement"

    round = models.ForeignKey("annotation.Round", on_delete=models.CASCADE, related_name="selections")
    strategy = models.CharField(max_length=16, choices=Strategy.choices)
    params = models.JSONField(default=dict, blank=True)
    scores = models.JSONField(default=dict, help_text="{prompt id: score}, higher is labelled first.")
    order = models.JSONField(default=list, help_text="Prompt ids in queue order.")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                   related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

