"""The health gate during a policy run: every ``health_every`` steps, and the last healthy policy kept.

The rule is the after-run gate's (``health.policy_health`` with the caller's thresholds, round 0, reference and
task checks, each compared with round 0's own pass rate on the same prompts, measured once per run with round
0's other figures) on fewer prompts (``health_prompts``, default 8, against the gate's 32). A trainer makes one
``InRunHealth`` when it starts and calls ``at_step`` after each optimizer step; what it returns goes into that
step's metrics (``health_eos_rate``, ``health_distinct_rate``, ``health_nll_rise``, ``health_kl_to_round0``,
``health_kl_to_reference``, ``health_task_<name>``, ``healthy`` 1/0), so it reaches the run's curves through
``hooks.on_step`` like any step metric. A healthy policy is written to ``output_dir/healthy_policy/`` (model or
LoRA adapter, tokenizer, and ``in_run_health.json``: its step and figures), replacing the one before: one kept
policy bounds the disk. The final step is not checked here: the after-run gate checks the final policy, and the
caller registers the kept one when the final one fails (``training.health.policy_gate``).

Off (no ``HealthWatch`` given, ``health_every`` 0, or a process other than the main one): no figures, no files,
nothing in the summary. The check draws from its own random stream (CPU and GPU), so training continues exactly
as it would without it. No Django here.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from training.ml.checkpoint import atomic_save_dir
from training.ml.health import HealthThresholds, format_health, policy_health, round0_baseline
from training.ml.types import TrainHooks

KEPT_DIR = "healthy_policy"
RECORD = "in_run_health.json"


@dataclass(frozen=True)
class HealthWatch:
    """What the in-run check needs besides the policy being trained (the caller's gate settings)."""

    prompts: list[list[dict]]  # held-out prompts; the first ``health_prompts`` are used
    thresholds: HealthThresholds = field(default_factory=HealthThresholds)
    round0: tuple | None = None  # (model, tokenizer); None: no round 0 in the lineage, the policy is its own
    reference: tuple | None = None  # (model, tokenizer) the run started from; None: KL to it not measured
    task_checks: Mapping | None = None


def kept_record(output_dir: str | Path) -> dict | None:
    """The kept policy's record (``step``, ``health``) under a run's output directory, or None."""
    path = Path(output_dir) / KEPT_DIR / RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def step_metrics(health: Mapping) -> dict[str, float]:
    """A check's figures as step metrics (numbers only; the ones not measured are left out)."""
    out = {f"health_{key}": float(health[key]) for key in
           ("eos_rate", "distinct_rate", "nll_rise", "kl_to_round0", "kl_to_reference") if health.get(key) is not None}
    out.update({f"health_task_{name}": float(rate) for name, rate in (health.get("task_checks") or {}).items()})
    return {**out, "healthy": 1.0 if health["healthy"] else 0.0}


class InRunHealth:
    """One run's in-run checks: ``at_step`` after every optimizer step, ``summary`` at the end."""

    def __init__(self, watch: HealthWatch | None, *, every: int, prompts: int, output_dir: str | Path,
                 hooks: TrainHooks, resume_step: int = 0) -> None:
        self.watch, self.every, self.hooks = watch, every if watch is not None else 0, hooks
        self.kept_dir = Path(output_dir) / KEPT_DIR
        self.thresholds = replace(watch.thresholds, prompts=min(prompts, watch.thresholds.prompts)) if watch else None
        self.baseline: dict | None = None  # round 0's own replies, measured at the first check
        self.checks, self.last_failed = [], None
        record = kept_record(output_dir) if self.every else None
        if record is not None and record["step"] > resume_step:  # kept after the step this attempt resumes from
            shutil.rmtree(self.kept_dir, ignore_errors=True)  # (or a fresh start): it will be checked again
            record = None
        self.kept_step = record["step"] if record else None

    @classmethod
    def start(cls, watch: HealthWatch | None, config, output_dir: str | Path, hooks: TrainHooks, *,
              main: bool = True, resume_step: int = 0) -> "InRunHealth":
        """The run's checks per ``config.health_every`` / ``health_prompts``; inactive without a watch or off main."""
        return cls(watch if main and config.health_every > 0 else None, every=config.health_every,
                   prompts=config.health_prompts, output_dir=output_dir, hooks=hooks, resume_step=resume_step)

    def at_step(self, step: int, total: int, model, tokenizer) -> dict[str, float]:
        """After optimizer step ``step``: check the policy when it is due; its figures, or {}."""
        if not self.every or step % self.every or step >= total:
            return {}
        health = self._check(model, tokenizer)
        self.checks.append(step)
        if health["healthy"]:
            self._keep(model, tokenizer, step, health)
        else:
            self.last_failed = {"step": step, "reasons": health["reasons"]}
        self.hooks.log(f"in-run check at step {step}: {format_health(health)}"
                       + ("; kept as the last healthy policy" if health["healthy"] else ""))
        return step_metrics(health)

    def summary(self) -> dict:
        if not self.every:
            return {}
        return {"health_watch": {"every": self.every, "prompts": self.thresholds.prompts, "checked_steps": self.checks,
                                 "last_failed": self.last_failed, "kept_step": self.kept_step,
                                 "kept_dir": str(self.kept_dir) if self.kept_step is not None else None}}

    def _check(self, model, tokenizer) -> dict:
        device = next(model.parameters()).device
        w, t = self.watch, self.thresholds
        round0 = w.round0 if w.round0 is not None else (model, tokenizer)
        for other in (w.round0, w.reference):  # loaded by the caller on the CPU; the check runs where the policy is
            if other is not None:
                other[0].to(device)
        was_training = model.training
        model.eval()  # no dropout: the figures describe the policy itself
        try:
            with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                if w.round0 is not None and self.baseline is None:
                    self.baseline = round0_baseline(round0, w.prompts, t, w.task_checks)  # incl. its task-check rates
                return policy_health((model, tokenizer), round0, w.prompts, thresholds=t, reference=w.reference,
                                     task_checks=w.task_checks, baseline=self.baseline)
        finally:
            model.train(was_training)

    def _keep(self, model, tokenizer, step: int, health: dict) -> None:
        def write(tmp: Path) -> None:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            (tmp / RECORD).write_text(json.dumps({"step": step, "health": health}, default=str))

        atomic_save_dir(self.kept_dir, write)  # replaces the previous kept policy in one rename
        self.kept_step = step
