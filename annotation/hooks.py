"""The operator's registry of code hooks: users choose a hook BY NAME, never by a ``module:function`` string.

Three kinds, each a callable the app calls with untrusted text, registered only on the server:

- ``utility``: ``(prompt_messages, response_text) -> float``, the taste of simulated labelers and of rule-based
  AI labelers (``lab.scorers.utility_scorer``);
- ``reward_fn``: the same signature, the rule-based reward of PPO/GRPO runs (``training.jobs.rl``);
- ``task_check``: the same signature, a policy health check (1.0 pass, 0.0 fail) on generated samples.

Where a name comes from: the built-ins below (``default``), those an app adds in its ``AppConfig.ready``
(``training`` adds ``demo``, the demo task's scorer), and the operator's setting ``RLHF_HOOKS``
(environment variable of the same name, JSON ``{"reward_fn": {"exact": "mypkg.rewards:exact_match"}}``),
which may add names or replace built-ins. A name is checked against this list (``hook_check``: nothing is
imported) and resolved only through it (``hook_resolve``: the operator's target is imported then), so a row
written before the registry existed that holds ``"os:system"`` is refused, never imported.

Only the operator at the command line may still give a ``module:function`` (``hook_load_for_operator``).
"""
from __future__ import annotations

import importlib
import re
from collections.abc import Callable

from django.conf import settings

from annotation.errors import InvalidInput

HOOK_KINDS = ("utility", "reward_fn", "task_check")
NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
TARGET = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

BUILTIN_HOOKS: dict[str, dict[str, str]] = {
    "utility": {"default": "annotation.utility:default_utility"},
    "reward_fn": {"default": "annotation.utility:default_utility"},
    "task_check": {},
}


def builtin_register(*, kind: str, name: str, target: str) -> None:
    """An app adds a built-in hook (from its ``AppConfig.ready``); the operator's ``RLHF_HOOKS`` wins over it."""
    if kind not in HOOK_KINDS or not NAME.match(name) or not TARGET.match(target):
        raise ValueError(f"bad built-in hook {kind}/{name} -> {target}")
    BUILTIN_HOOKS[kind][name] = target


def hooks_settings_check() -> None:
    """Refuse to start with a malformed ``RLHF_HOOKS`` (called from ``AnnotationConfig.ready``)."""
    from django.core.exceptions import ImproperlyConfigured

    configured = getattr(settings, "RLHF_HOOKS", {})
    if not isinstance(configured, dict):
        raise ImproperlyConfigured("RLHF_HOOKS must be a JSON object {kind: {name: 'module:function'}}")
    for kind, hooks in configured.items():
        if kind not in HOOK_KINDS or not isinstance(hooks, dict):
            raise ImproperlyConfigured(f"RLHF_HOOKS: {kind!r} is not one of {', '.join(HOOK_KINDS)} with an object")
        for name, target in hooks.items():
            if not isinstance(name, str) or not NAME.match(name):
                raise ImproperlyConfigured(f"RLHF_HOOKS[{kind!r}]: bad name {name!r} (lowercase, digits, _ . -)")
            if not isinstance(target, str) or not TARGET.match(target):
                raise ImproperlyConfigured(f"RLHF_HOOKS[{kind!r}][{name!r}]: {target!r} is not 'module:function'")


def hooks_available(*, kind: str) -> dict[str, str]:
    """Name -> ``module:function`` of every hook of ``kind`` (operator's view; users see only the names)."""
    if kind not in HOOK_KINDS:
        raise ValueError(f"unknown hook kind {kind!r}")
    configured = (getattr(settings, "RLHF_HOOKS", None) or {}).get(kind) or {}
    return {**BUILTIN_HOOKS[kind], **configured}


def hook_names(*, kind: str) -> list[str]:
    return sorted(hooks_available(kind=kind))


def hook_check(*, kind: str, name, location: str) -> str:
    """``name`` if it is a registered hook of ``kind``; InvalidInput listing the available names otherwise.
    Imports nothing."""
    available = hooks_available(kind=kind)
    if not isinstance(name, str) or name not in available:
        shown = repr(name[:80]) if isinstance(name, str) else type(name).__name__
        listed = ", ".join(sorted(available)) or "none (the operator registers them in RLHF_HOOKS)"
        raise InvalidInput(f"{shown} is not a registered {kind} hook; choose one of: {listed}", location=location)
    return name


def hook_resolve(*, kind: str, name, location: str) -> Callable:
    """The callable registered as ``name`` (checked with ``hook_check`` first, so only operator targets load)."""
    return _import_target(hooks_available(kind=kind)[hook_check(kind=kind, name=name, location=location)],
                          location=location)


def hook_load_for_operator(spec: str, *, kind: str, location: str) -> Callable:
    """The operator's command-line form: a registered name, or any ``module:function`` (never reached from
    the browser, the API or a stored row)."""
    if isinstance(spec, str) and ":" in spec:
        return _import_target(spec, location=location)
    return hook_resolve(kind=kind, name=spec, location=location)


def _import_target(target: str, *, location: str) -> Callable:
    if not isinstance(target, str) or not TARGET.match(target.strip()):
        raise InvalidInput(f"expected 'module:function', got {str(target)[:80]!r}", location=location)
    module_name, function_name = target.strip().split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(f"cannot import module {module_name!r}: {exc}", location=location) from exc
    function = getattr(module, function_name, None)
    if function is None:
        raise InvalidInput(f"module {module_name!r} has no attribute {function_name!r}", location=location)
    if not callable(function):
        raise InvalidInput(f"{target!r} is not callable", location=location)
    return function
