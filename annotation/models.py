"""Preference collection: projects, rounds, prompts, samples, leases, rankings and their pairs.

Invariants live in the database where it can hold them: one ranking per labeler per prompt, one
pair per (ranking, chosen, rejected), a pair never compares a sample with itself. On PostgreSQL a
deferred constraint trigger (migration 0002) also checks that a ranking covers exactly its prompt's
samples; on every backend the ranking service validates the same before it writes.
"""
from django.conf import settings
from django.db import models
from django.db.models import F, Q


class Project(models.Model):
    slug = models.SlugField(max_length=64, unique=True)
    name = models.CharField(max_length=200)
    k = models.PositiveSmallIntegerField(help_text="Responses per prompt.")
    overlap = models.PositiveSmallIntegerField(default=1, help_text="Labelers who rank each prompt.")
    guidelines = models.TextField(blank=True, help_text="Markdown shown to labelers.")
    lease_minutes = models.PositiveIntegerField(default=30)
    created_at = models.DateTimeField(auto_now_add=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(k__gte=2), name="project_k_at_least_2"),
            models.CheckConstraint(condition=Q(overlap__gte=1), name="project_overlap_at_least_1"),
        ]

    def __str__(self) -> str:
        return self.slug


class Membership(models.Model):
    class Role(models.TextChoices):
        LABELER = "labeler", "Labeler"
        RESEARCHER = "researcher", "Researcher"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.LABELER)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["project", "user"], name="membership_unique")]

    def __str__(self) -> str:
        return f"{self.user} in {self.project} as {self.role}"


class Round(models.Model):
    class Status(models.TextChoices):
        DRAFT = "draft", "Draft"
        GENERATING = "generating", "Generating"
        OPEN = "open", "Open for labelling"
        CLOSED = "closed", "Closed"

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="rounds")
    number = models.PositiveIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.OPEN)
    source = models.CharField(max_length=200, blank=True, help_text="Import file or generating policy.")
    sampling_params = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["project", "number"]
        constraints = [models.UniqueConstraint(fields=["project", "number"], name="round_number_unique")]

    def __str__(self) -> str:
        return f"{self.project.slug} round {self.number}"


class Prompt(models.Model):
    """One user turn or a multi-turn conversation: a list of {role, content} messages."""

    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="prompts")
    round = models.ForeignKey(Round, on_delete=models.CASCADE, related_name="prompts")
    messages = models.JSONField()
    external_id = models.CharField(max_length=200, blank=True)
    is_gold = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)
    # Denormalised from the prompt's leases by annotation.services under the prompt's row lock (migration
    # 0005), so that leasing filters on two columns instead of counting every open prompt's leases.
    slots_taken = models.PositiveSmallIntegerField(
        default=0, editable=False, help_text="Submitted and active leases (active ones past expiry too, until reclaimed)."
    )
    lease_expires_min = models.DateTimeField(
        null=True, blank=True, editable=False, help_text="Earliest expiry among the prompt's active leases."
    )

    class Meta:
        ordering = ["id"]
        indexes = [
            models.Index(fields=["round", "id"]),
            # Leasing reads each slot level of a round in id order and stops after a few rows (migration 0010;
            # selectors._lease_window_sql), so full prompts are never read however many there are.
            models.Index(fields=["round", "is_gold", "slots_taken", "id"], name="prompt_lease_idx"),
            models.Index(fields=["lease_expires_min"], condition=Q(lease_expires_min__isnull=False),
                         name="prompt_lease_expiry_idx"),
        ]

    def __str__(self) -> str:
        return f"prompt {self.pk}"


class Sample(models.Model):
    """One response to a prompt, and which model and round produced it."""

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="samples")
    text = models.TextField()
    text_sha256 = models.CharField(max_length=64)
    position = models.PositiveSmallIntegerField(help_text="Index in the source order.")
    model_name = models.CharField(max_length=200, blank=True)
    logprob = models.FloatField(null=True, blank=True, help_text="log p(response|prompt) under the generating policy.")
    num_tokens = models.PositiveIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["prompt", "position"]
        constraints = [
            models.UniqueConstraint(fields=["prompt", "text_sha256"], name="sample_text_unique_per_prompt"),
            models.UniqueConstraint(fields=["prompt", "position"], name="sample_position_unique_per_prompt"),
        ]

    def __str__(self) -> str:
        return f"sample {self.pk} of prompt {self.prompt_id}"


class Assignment(models.Model):
    """A lease of one prompt to one labeler. Expired leases give the slot back to the pool."""

    class Status(models.TextChoices):
        ACTIVE = "active", "Active"
        SUBMITTED = "submitted", "Submitted"
        SKIPPED = "skipped", "Skipped"
        EXPIRED = "expired", "Expired"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="assignments")
    labeler = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="assignments")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.ACTIVE)
    shown_order = models.JSONField(help_text="Sample ids in the order this labeler sees them.")
    skip_reason = models.CharField(max_length=500, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    expires_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["prompt", "labeler"], name="assignment_unique_per_labeler")]
        indexes = [models.Index(fields=["prompt", "status"]), models.Index(fields=["status", "expires_at"])]

    def __str__(self) -> str:
        return f"{self.labeler} on prompt {self.prompt_id} ({self.status})"


class Ranking(models.Model):
    """Ordered tiers of a prompt's samples (ties allowed). Its entries hold tier, flags and shown position."""

    class Source(models.TextChoices):
        """Where the ranking came from (provenance; ``annotation/provenance.py`` groups them for exports,
        training snapshots and quality figures)."""

        HUMAN = "human", "Human"
        SIMULATED = "simulated", "Simulated labeler"
        IMPORTED = "imported", "Imported"
        AI = "ai", "AI labeler"
        ARENA = "arena", "Arena vote"
        GOLD = "gold", "Gold prompt (labeler's ranking of a gold prompt)"

    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="rankings")
    labeler = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="rankings"
    )
    assignment = models.OneToOneField(
        Assignment, null=True, blank=True, on_delete=models.SET_NULL, related_name="ranking"
    )
    source = models.CharField(max_length=16, choices=Source.choices, default=Source.HUMAN, db_index=True)
    time_spent_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)
    # The labeler's own words and verdict (migration 0006). "All bad" leaves the pairs as ranked (the least
    # bad first still says which is better); it tells researchers that even the chosen responses are poor.
    comment = models.CharField(max_length=1000, blank=True, help_text="The labeler's free-text comment.")
    all_bad = models.BooleanField(default=False, help_text="The labeler marked every response as bad.")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["prompt", "labeler"], name="ranking_unique_per_labeler"),
            models.UniqueConstraint(
                fields=["prompt"], condition=Q(labeler__isnull=True), name="ranking_unique_anonymous_per_prompt"
            ),
            models.CheckConstraint(
                condition=Q(labeler__isnull=False) | Q(source="imported"), name="ranking_labeler_unless_imported"
            ),
        ]

    def __str__(self) -> str:
        return f"ranking {self.pk} of prompt {self.prompt_id}"


class RankingEntry(models.Model):
    """One sample's place in a ranking: tier 0 is best; equal tiers are ties."""

    class Flag(models.TextChoices):
        UNSAFE = "unsafe", "Unsafe"
        FACTUALLY_WRONG = "factually_wrong", "Factually wrong"
        OFF_TOPIC = "off_topic", "Off-topic"

    ranking = models.ForeignKey(Ranking, on_delete=models.CASCADE, related_name="entries")
    sample = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="ranking_entries")
    tier = models.PositiveSmallIntegerField()
    shown_position = models.PositiveSmallIntegerField()
    flags = models.JSONField(default=list, blank=True)

    class Meta:
        ordering = ["ranking", "tier", "shown_position"]
        constraints = [
            models.UniqueConstraint(fields=["ranking", "sample"], name="entry_sample_once_per_ranking"),
            models.UniqueConstraint(fields=["ranking", "shown_position"], name="entry_position_once_per_ranking"),
        ]


class PairwiseComparison(models.Model):
    """chosen ≻ rejected, from one ranking; margin is the tier distance (≥ 1)."""

    ranking = models.ForeignKey(Ranking, on_delete=models.CASCADE, related_name="pairs")
    prompt = models.ForeignKey(Prompt, on_delete=models.CASCADE, related_name="pairs")
    chosen = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="+")
    rejected = models.ForeignKey(Sample, on_delete=models.CASCADE, related_name="+")
    margin = models.PositiveSmallIntegerField()
    weight = models.FloatField(default=1.0, help_text="Reliability weight, 1.0 unless quality control lowers it.")

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["ranking", "chosen", "rejected"], name="pair_unique_per_ranking"),
            models.CheckConstraint(condition=~Q(chosen=F("rejected")), name="pair_distinct_samples"),
            models.CheckConstraint(condition=Q(margin__gte=1), name="pair_margin_positive"),
        ]


# Quality control, AI labelers and active selection tables (owned by that feature; migration 0003).
from annotation.quality.models import (  # noqa: E402,F401
    AILabeler, GoldRanking, LabelerReliability, PromptPriority, PromptReview, QualitySettings,
    RankingExclusion, SelectionRecord,
)
