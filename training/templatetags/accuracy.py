"""``{% held_out_accuracy info %}``: an accuracy with its 95% Wilson interval, and a warning when the held-out
set is too small (see training/accuracy.py). ``info`` comes from ``accuracy_of_summary``/``accuracy_of_metrics``
(the filters below)."""
from django import template
from django.utils.html import format_html

from training.accuracy import accuracy_of_metrics, accuracy_of_summary, accuracy_text, accuracy_with_interval

register = template.Library()

register.filter("summary_accuracy", accuracy_of_summary)
register.filter("metrics_accuracy", accuracy_of_metrics)


@register.filter
def accuracy_on(accuracy, pairs):
    """``{{ m.rm_accuracy|accuracy_on:m.rm_eval_pairs }}``"""
    return accuracy_with_interval(accuracy, pairs)


@register.simple_tag
def held_out_accuracy(info, full: bool = False) -> str:
    """In tables a short warning (the sentence in its title); ``full=True`` spells the warning out."""
    if info is None:
        return "—"
    if not info["too_small"]:
        return format_html('<span class="accuracy">{}</span>', accuracy_text(info))
    if full:
        return format_html('<span class="accuracy">{}</span> <span class="warn small-eval" role="note">⚠ {}</span>',
                           accuracy_text(info), info["warning"])
    return format_html('<span class="accuracy">{}</span> <span class="warn small-eval" title="{}">⚠ too few '
                       'held-out pairs to mean much</span>', accuracy_text(info), info["warning"])


@register.filter
def metric_value(value):
    """A metric for people: floats to 4 significant digits (0.2222222238779068 → 0.2222), the rest as is."""
    if isinstance(value, float):
        return f"{value:.4g}"
    return value
