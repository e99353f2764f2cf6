"""Atomic, resumable checkpoints shared by every trainer.

Layout: ``<root>/step-00000120/`` holding ``model/`` (save_pretrained: the full model, or only the peft
adapter of a PeftModel; safetensors) and ``state.pt`` (optimizer, scheduler, RNG states, step, extra).
A checkpoint is written into a hidden temporary directory and renamed into place with ``os.replace``, so a
worker killed mid-write leaves either the previous checkpoints or the new one, never half of one. The
state is loaded with ``torch.load(weights_only=True)``: no pickled code runs on load.
"""
from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file

STEP_DIR = re.compile(r"^step-(\d{8})$")


def atomic_save_dir(target: Path, write) -> Path:
    """Call ``write(tmp_dir)`` then move tmp_dir to ``target`` in one rename (replacing any old target)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # A plain mkdir, not mkdtemp (mode 0700): the directory gets the umask's mode like its parents, so the web
    # and the workers of other machines can read it on a shared artifact root under another uid.
    tmp = target.parent / f".tmp-{target.name}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        write(tmp)
        _fsync_tree(tmp)
        if target.exists():  # os.replace cannot overwrite a non-empty directory: move the old one aside first
            trash = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
            os.replace(target, trash / "old")
            os.replace(tmp, target)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync_dir(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_save(
    *, root: Path, step: int, model, optimizer, scheduler=None, extra: dict | None = None, keep: int = 2,
    model_state: dict | None = None, optimizer_state: dict | None = None,
) -> Path:
    """Write checkpoint ``step`` under ``root`` atomically, then delete all but the newest ``keep``.

    ``model_state`` / ``optimizer_state``: full states gathered beforehand by every process of a sharded run
    (``sharding.full_model_state``, ``sharding.full_optimizer_state``), written instead of the model's and the
    optimizer's own: the checkpoint is the one-process one either way.
    """

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp / "model", **({} if model_state is None else {"state_dict": model_state}))
        state = {
            "step": step,
            "optimizer": optimizer.state_dict() if optimizer_state is None else optimizer_state,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "rng": rng_state(),
            "extra": extra or {},
        }
        torch.save(state, tmp / "state.pt")

    path = atomic_save_dir(Path(root) / f"step-{step:08d}", write)
    for old in checkpoint_list(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return path


def checkpoint_list(root: Path) -> list[Path]:
    """Complete checkpoints under ``root``, oldest first (temporary directories are ignored)."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if STEP_DIR.match(p.name) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))


def checkpoint_latest(root: Path) -> Path | None:
    checkpoints = checkpoint_list(root)
    return checkpoints[-1] if checkpoints else None


def checkpoint_load(path: Path, *, model, optimizer=None, scheduler=None, restore_rng: bool = True,
                    sharded: bool = False) -> dict:
    """Load weights, optimizer, scheduler and RNG states from ``path``; return {"step", "extra"}.
    ``sharded``: ``model`` is an FSDP module and ``optimizer`` holds its shards; every process loads together."""
    path = Path(path)
    load_model_weights(path / "model", model, sharded=sharded)
    state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    if optimizer is not None and sharded:
        from training.ml import sharding

        sharding.load_optimizer_state(model, optimizer, state["optimizer"])
    elif optimizer is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state["scheduler"] is not None:
        scheduler.load_state_dict(state["scheduler"])
    if restore_rng:
        set_rng_state(state["rng"])
    return {"step": int(state["step"]), "extra": state["extra"]}


def load_model_weights(model_dir: Path, model, *, sharded: bool = False) -> None:
    """Copy save_pretrained safetensors weights from ``model_dir`` into ``model`` in place (``sharded``: into an
    FSDP module, every process with the same files)."""
    weights: dict[str, torch.Tensor] = {}
    for file in sorted(Path(model_dir).glob("*.safetensors")):
        weights.update(load_file(file))
    if not weights:
        raise FileNotFoundError(f"no .safetensors weights in {model_dir}")
    if hasattr(model, "peft_config"):  # a PeftModel saved only its adapter (and modules_to_save)
        from peft import set_peft_model_state_dict

        if sharded:
            from training.ml import sharding

            result = sharding.load_full_adapter(model, weights)
        else:
            result = set_peft_model_state_dict(model, weights)
        if result.unexpected_keys:
            raise RuntimeError(f"checkpoint adapter has unexpected weights: {result.unexpected_keys[:5]}")
        return
    if sharded:
        from training.ml import sharding

        missing, unexpected = sharding.load_full_state(model, weights)
    else:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    params = dict(model.named_parameters(remove_duplicate=False))
    loaded = {id(params[k]) for k in weights if k in params}  # a tied weight is one parameter under two names
    untied_missing = [k for k in missing if k not in params or id(params[k]) not in loaded]
    if unexpected or untied_missing:
        raise RuntimeError(f"checkpoint does not match the model: missing {untied_missing[:5]}, unexpected {unexpected[:5]}")


def _fsync_tree(directory: Path) -> None:
    for dirpath, _, filenames in os.walk(directory):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_resume(root: Path, *, model, optimizer, scheduler, log: Callable[[str], None], resume: bool = True,
                      total: int | None = None, sharded: bool = False) -> tuple[int, dict]:
    """(first step to run, the checkpoint's ``extra``) from the newest checkpoint under ``root``, or (0, {}).
    Every process of a data-parallel run calls it with the same files, before the model is wrapped (DDP) or
    after it is sharded (``sharded``)."""
    latest = checkpoint_latest(root) if resume else None
    if latest is None:
        return 0, {}
    state = checkpoint_load(latest, model=model, optimizer=optimizer, scheduler=scheduler, sharded=sharded)
    log(f"resumed from {latest.name} (step {state['step']}" + (f" of {total})" if total else ")"))
    return state["step"], state["extra"]

