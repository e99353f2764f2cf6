"""``{{ a.health|task_checks_text }}``: a policy's task-check pass rates, each with round 0's beside it
(``training.ml.health.format_task_checks``; "" without task checks)."""
from django import template

from training.ml.health import format_task_checks

register = template.Library()


@register.filter
def task_checks_text(health) -> str:
    return format_task_checks(health) if isinstance(health, dict) else ""
