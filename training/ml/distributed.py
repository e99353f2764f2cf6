"""Data parallelism on every device of a worker, through `accelerate`. No Django here.

Launch side (the run supervisor): ``num_processes()`` says how many processes a run gets (one per CUDA
device, or ``RLHF_NUM_PROCESSES``) and ``launch_command()`` builds the command line: plain
``python -m MODULE ARGS`` for one process, ``accelerate launch --multi_gpu --num_processes N -m MODULE ARGS``
for several (torchrun underneath: one process per device, NCCL on CUDA, gloo on CPU).

Trainer side: every process holds the whole model (DDP), takes its share of each optimizer step's groups
(``shard``), and scales its loss so that DDP's gradient average equals the gradient of the global mean
(``global_mean_scales``): N processes on a batch of B prompts train the same model as one process on it.
Only the main process reports, logs and writes; ``any_process`` shares the main process's "stop now".

>>> launch_command(1, ["training.runner", "7"])[1:]
['-m', 'training.runner', '7']
>>> launch_command(2, ["training.runner", "7"])[1:6]
['-m', 'accelerate.commands.launch', '--multi_gpu', '--num_processes', '2']
>>> shard([10, 11, 12, 13, 14], rank=1, world=2), shard([10], rank=1, world=2)
(([11, 13], False), ([10], True))
"""
from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence

import torch

ENV_NUM_PROCESSES = "RLHF_NUM_PROCESSES"


def num_processes(*, env: Mapping[str, str] | None = None, device_count: int | None = None) -> int:
    """Processes for one run: ``RLHF_NUM_PROCESSES`` when set, else one per visible CUDA device (at least 1)."""
    env = os.environ if env is None else env
    value = env.get(ENV_NUM_PROCESSES, "").strip()
    if value:
        if not value.isdigit() or int(value) < 1:
            raise ValueError(f"{ENV_NUM_PROCESSES} must be a whole number >= 1, got {value!r}")
        return int(value)
    return max(1, cuda_device_count() if device_count is None else device_count)


def cuda_device_count() -> int:
    return torch.cuda.device_count()


def process_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's global rank as the launcher (torchrun) set it; 0 when not launched by one."""
    return int((os.environ if env is None else env).get("RANK", "0"))


def launch_command(num_processes: int, module_args: Sequence[str], *, cuda: bool = True) -> list[str]:
    """The command that runs ``python -m <module_args>`` in ``num_processes`` data-parallel processes.

    One process: exactly ``python -m MODULE ARGS`` (no launcher, nothing added). Several: ``accelerate
    launch`` with every setting explicit, so a stray accelerate config file cannot change the run, and a
    free rendezvous port (several runs may share a machine). ``cuda=False`` (tests, CPU-only workers) sets
    ACCELERATE_USE_CPU=true through ``env``: accelerate then uses gloo on CPU ("--cpu" would start only one
    process).
    """
    if num_processes < 1:
        raise ValueError(f"num_processes must be >= 1, got {num_processes}")
    if not module_args:
        raise ValueError("module_args must name a module to run")
    if num_processes == 1:
        return [sys.executable, "-m", *module_args]
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
        "--num_machines", "1", "--main_process_port", "0", "--mixed_precision", "no", "--dynamo_backend", "no",
        "-m", *module_args,
    ]
    return command if cuda else ["env", "ACCELERATE_USE_CPU=true", *command]


def shard(indices: Sequence[int], *, rank: int, world: int) -> tuple[list[int], bool]:
    """This process's share of one step's groups: every ``world``-th from ``rank``; a pure function of its inputs.

    Returns (indices, is_padding). A process left without a group (fewer groups than processes, e.g. at the
    end of an epoch) gets the step's first group with ``is_padding=True``: it must still run forward and
    backward (DDP waits for every process), but its loss is scaled by 0.
    """
    mine = list(indices[rank::world])
    if mine:
        return mine, False
    return list(indices[:1]), True


def global_mean_scales(accelerator, *, pair_weight: float, responses: int) -> tuple[float, float]:
    """Factors that turn this process's pair-mean and response-mean losses into its share of the global means.

    DDP averages gradients over W processes, so a process whose pairs carry weight w_r of the step's total
    weight w scales its weighted pair mean by W·w_r/w, and its per-response mean by W·n_r/n: then
    1/W Σ_r scale_r · mean_r = Σ_r (sum_r) / total, the mean one process would take over the whole batch.
    """
    world = accelerator.num_processes
    local = torch.tensor([pair_weight, float(responses)], device=accelerator.device, dtype=torch.float64)
    total = accelerator.reduce(local, reduction="sum")  # (2,)
    weight_total, responses_total = total.tolist()
    return (world * pair_weight / max(weight_total, 1e-12), world * responses / max(responses_total, 1.0))


def any_process(flag: bool, accelerator) -> bool:
    """True on every process when ``flag`` is true on any (e.g. the main process saw a cancel)."""
    if accelerator.num_processes == 1:
        return flag
    local = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(local, reduction="sum").item() > 0)


def sum_over_processes(values: list[float], accelerator) -> list[float]:
    """Element-wise sum of a few numbers over all processes (metrics); the numbers themselves on one process."""
    if accelerator.num_processes == 1:
        return list(values)
    local = torch.tensor(values, device=accelerator.device, dtype=torch.float64)
    return accelerator.reduce(local, reduction="sum").tolist()


def threads_per_process(configured: int, processes: int) -> int:
    """torch CPU threads for one of ``processes`` processes sharing this machine (``configured`` wins if set)."""
    return configured or max(1, (os.cpu_count() or 1) // processes)


def wrap(model, accelerator):
    """The module to run forward/backward through: DDP under several processes, the model itself on one."""
    return accelerator.prepare_model(model) if accelerator.num_processes > 1 else model


def sums(values: dict[str, float], accelerator) -> dict[str, float]:
    """``sum_over_processes`` for a dict of numbers (the same keys on every process)."""
    keys = sorted(values)
    return dict(zip(keys, sum_over_processes([float(values[k]) for k in keys], accelerator)))


def weighted_means(values: dict[str, float], weight: float, accelerator) -> tuple[dict[str, float], float]:
    """Means over all processes of per-process means ``values`` weighted by ``weight`` (e.g. pairs); (means, Σ weight)."""
    total = sums({**{k: v * weight for k, v in values.items()}, "\0weight": weight}, accelerator)
    weight_total = total.pop("\0weight")
    return {k: v / max(weight_total, 1e-12) for k, v in total.items()}, weight_total
