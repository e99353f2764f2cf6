"""Training runs, their dataset snapshots, metrics and the model artifacts they register.

A TrainingRun row is the source of truth for a run: Celery messages carry its id; the worker claims it
here before it starts, heartbeats here while it runs, and writes every state change through
``training.services``.
"""
from django.conf import settings
from django.db import models
from django.db.models import Q


class DatasetSnapshot(models.Model):
    """An immutable record of which rankings a run trained on, so it can be reproduced later."""

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="snapshots")
    filters = models.JSONField(default=dict, blank=True, help_text="Rounds, sources and other filters used.")
    rankings = models.ManyToManyField("annotation.Ranking", related_name="snapshots", blank=True)
    num_rankings = models.PositiveIntegerField(default=0)
    num_pairs = models.PositiveIntegerField(default=0)
    num_prompts = models.PositiveIntegerField(default=0)
    content_hash = models.CharField(max_length=64, help_text="sha256 over the sorted ranking ids.")
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return f"snapshot {self.pk} ({self.num_rankings} rankings)"


class TrainingRun(models.Model):
    class Kind(models.TextChoices):
        REWARD = "reward", "Reward model"
        SFT = "sft", "SFT"
        DPO = "dpo", "DPO"
        PPO = "ppo", "PPO"
        GRPO = "grpo", "GRPO"
        GENERATE = "generate", "Generation"

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    TERMINAL = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="runs")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED)
    config = models.JSONField(default=dict)
    snapshot = models.ForeignKey(DatasetSnapshot, null=True, blank=True, on_delete=models.PROTECT, related_name="runs")
    base_artifact = models.ForeignKey(
        "ModelArtifact", null=True, blank=True, on_delete=models.PROTECT, related_name="derived_runs"
    )
    round = models.ForeignKey(
        "annotation.Round", null=True, blank=True, on_delete=models.SET_NULL, related_name="runs",
        help_text="For generation: the round it fills. For training: the newest round it trained on.",
    )
    launched_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    worker = models.CharField(max_length=200, blank=True)
    claim_token = models.CharField(max_length=64, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    attempts = models.PositiveSmallIntegerField(default=0)
    queued_at = models.DateTimeField(null=True, blank=True, help_text="When the run last entered the queue.")
    dispatches = models.PositiveIntegerField(default=0, help_text="Celery messages sent for the current queueing.")
    max_attempts = models.PositiveSmallIntegerField(default=3)
    cancel_requested = models.BooleanField(default=False)
    step = models.PositiveIntegerField(default=0)
    total_steps = models.PositiveIntegerField(default=0)
    summary = models.JSONField(default=dict, blank=True, help_text="Final metrics and counts.")
    overoptimised = models.BooleanField(
        default=False, help_text="The reward-model score rose while the labelers' measure of its policy fell."
    )
    flag_reason = models.CharField(max_length=500, blank=True)
    log_tail = models.TextField(blank=True)
    error = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]
        constraints = [
            models.CheckConstraint(
                condition=Q(status__in=["queued", "running", "succeeded", "failed", "cancelled"]),
                name="run_status_valid",
            )
        ]

    def __str__(self) -> str:
        return f"{self.kind} run {self.pk} ({self.status})"

    @property
    def is_terminal(self) -> bool:
        return self.status in self.TERMINAL


class MetricPoint(models.Model):
    """Metrics of one step of one run; split is 'train' or 'eval'."""

    run = models.ForeignKey(TrainingRun, on_delete=models.CASCADE, related_name="metrics")
    step = models.PositiveIntegerField()
    split = models.CharField(max_length=16, default="train")
    values = models.JSONField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["run", "step"]
        constraints = [models.UniqueConstraint(fields=["run", "split", "step"], name="metric_unique_step")]


class ModelArtifact(models.Model):
    """A save_pretrained directory (full model, or a LoRA adapter plus its base), with lineage."""

    class Kind(models.TextChoices):
        BASE = "base", "Base model"
        REWARD = "reward", "Reward model"
        POLICY = "policy", "Policy"

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="artifacts")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    name = models.CharField(max_length=200)
    path = models.CharField(max_length=500, help_text="Directory relative to ARTIFACT_ROOT, or absolute for a base.")
    is_adapter = models.BooleanField(default=False)
    base_model = models.CharField(max_length=500, blank=True, help_text="Base model path or hub id an adapter needs.")
    parent = models.ForeignKey("self", null=True, blank=True, on_delete=models.SET_NULL, related_name="children")
    run = models.OneToOneField(TrainingRun, null=True, blank=True, on_delete=models.SET_NULL, related_name="artifact")
    snapshot = models.ForeignKey(DatasetSnapshot, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    rounds = models.JSONField(default=list, blank=True)
    metrics = models.JSONField(default=dict, blank=True)
    size_bytes = models.BigIntegerField(default=0)
    # The health gate (training.ml.health) of a policy, run before it is registered: None when not checked.
    healthy = models.BooleanField(null=True, blank=True, help_text="Passed the health gate (None: not checked).")
    health = models.JSONField(default=dict, blank=True, help_text="The gate's figures, thresholds and reasons.")
    health_override_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                           related_name="+", help_text="Who let an unhealthy policy generate a round.")
    health_override_reason = models.CharField(max_length=500, blank=True)
    health_override_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"

    @property
    def may_generate(self) -> bool:
        """Healthy, not checked, or an unhealthy policy a researcher let through (recorded)."""
        return self.healthy is not False or self.health_override_at is not None


class Demonstration(models.Model):
    """A (prompt, response) example written by a person, for SFT (imported as JSONL)."""

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="demonstrations")
    messages = models.JSONField(help_text="The prompt: a list of {role, content} messages.")
    response = models.TextField()
    content_sha256 = models.CharField(max_length=64, help_text="sha256 of the prompt and response (dedupe).")
    source = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["project", "content_sha256"], name="demonstration_unique_per_project")
        ]


class PoolPrompt(models.Model):
    """A prompt of the project's pool: "start next round" and PPO/GRPO sample their prompts from it."""

    project = models.ForeignKey("annotation.Project", on_delete=models.CASCADE, related_name="pool_prompts")
    messages = models.JSONField()
    content_sha256 = models.CharField(max_length=64)
    source = models.CharField(max_length=200, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["id"]
        constraints = [models.UniqueConstraint(fields=["project", "content_sha256"], name="pool_prompt_unique_per_project")]


class RoundReport(models.Model):
    """Figures of one generated round: health at generation; utility, KL and RM figures once measured.

    ``metrics`` keys (each optional): utility_mean, utility_se, kl_to_round0, nll_round0, eos_rate,
    distinct_rate, mean_tokens, mean_logprob, rm_accuracy, rm_score_mean, rm_score_prev_round, agreement.
    """

    round = models.OneToOneField("annotation.Round", on_delete=models.CASCADE, related_name="report")
    policy = models.ForeignKey(ModelArtifact, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                               help_text="The policy that generated the round's samples.")
    metrics = models.JSONField(default=dict, blank=True)
    overoptimised = models.BooleanField(default=False)
    flag_reason = models.CharField(max_length=500, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"report of {self.round}"


class IdempotencyKey(models.Model):
    """One user's write made with a client key (a form's hidden field, or the API's ``Idempotency-Key`` header).

    The unique constraint makes a repeat of the key (a double click, a retry after a timeout) wait for the
    first request's transaction and then return its result instead of writing again; see
    ``training/idempotency.py``. ``fingerprint`` is a sha256 of the request's arguments, so the same key
    with different arguments is rejected rather than silently answered with the first result.
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="+")
    scope = models.CharField(max_length=100, help_text='The write and its target, e.g. "round_start:project 3".')
    key = models.CharField(max_length=200)
    fingerprint = models.CharField(max_length=64)
    result_type = models.CharField(max_length=100, blank=True, help_text='"app_label.model" of the result.')
    result_id = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["user", "scope", "key"], name="idempotency_key_unique")]

    def __str__(self) -> str:
        return f"{self.scope} key {self.key[:12]}"


class HealthSettings(models.Model):
    """A project's health-gate thresholds (``training.ml.health.HealthThresholds`` fields; missing: defaults)
    and the names of the task checks its policies must pass (resolved by ``training.health.task_checks_resolve``)."""

    project = models.OneToOneField("annotation.Project", on_delete=models.CASCADE, related_name="health_settings")
    thresholds = models.JSONField(default=dict, blank=True)
    task_checks = models.JSONField(default=list, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return f"health settings of project {self.project_id}"
