"""DPO throughput: our K-way trainer vs TRL's DPOTrainer, same tiny model, data and process.

    .venv/bin/python bench/bench_dpo.py --prompts 128 --k 4

Data: ``--prompts`` demo prompts with K responses each, every group ranked once without ties by the demo
utility (+ tiny noise), so each prompt gives C(K,2) pairs. Ours trains on the RankedGroups (K policy
forwards per prompt; reference log-probs stored at generation, so no reference pass); TRL trains on the
same rankings expanded to pairs (two policy forwards per pair plus its own reference forwards). Both run
one epoch with the same pairs per optimizer step, learning rate and β, fp32 on the CPU, one after the other
in this process. Timed end to end: from the trainer call (tokenisation included) to the trained model.
A second "ours" figure also computes the reference log-probs inside the run (none stored).
"""
from __future__ import annotations

import argparse
import math
import random
import sys
import tempfile
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from training.ml import demo_task  # noqa: E402
from training.ml.config import DPOConfig  # noqa: E402
from training.ml.generation import load_policy, sequence_logprobs  # noqa: E402
from preferences.tiers import tiers_from_scores  # noqa: E402
from training.ml.trainers.dpo import train_dpo  # noqa: E402
from training.ml.types import NullHooks, RankedGroup  # noqa: E402


def make_groups(n_prompts: int, k: int, seed: int) -> list[RankedGroup]:
    rng = random.Random(seed)
    demos = demo_task.make_demonstrations(n_prompts * k, seed=seed)
    groups = []
    for i in range(n_prompts):
        messages = demos[i * k][0]
        responses = [r for _, r in demos[i * k: (i + 1) * k]]
        scores = [demo_task.demo_utility(messages, r) + rng.gauss(0, 1e-3) for r in responses]
        groups.append(RankedGroup(prompt_id=i, messages=messages, responses=responses,
                                  rankings=[tiers_from_scores(dict(enumerate(scores)), tie_threshold=0.0)]))
    return groups


def with_ref_logprobs(groups: list[RankedGroup], model_dir: str) -> list[RankedGroup]:
    """What generation stores with each sample: log π_ref(y|x) under the generating policy."""
    model, tokenizer = load_policy(model_dir)
    out = []
    for g in groups:
        ref = sequence_logprobs(model, tokenizer, [g.messages] * len(g.responses), g.responses).tolist()
        out.append(RankedGroup(g.prompt_id, g.messages, g.responses, g.rankings, ref_logprobs=ref))
    return out


def run_ours(groups, model_dir: str, args, out: Path) -> tuple[float, int]:
    config = DPOConfig(base_model=model_dir, beta=args.beta, learning_rate=args.lr, epochs=1.0,
                       batch_size=args.pairs_per_step // math.comb(args.k, 2), lr_scheduler="constant",
                       checkpoint_every=10**6, eval_every=10**6, max_length=args.max_length,
                       num_threads=torch.get_num_threads())
    started = time.perf_counter()
    summary = train_dpo(config, groups, [], output_dir=out, hooks=NullHooks(), resume=False)
    return time.perf_counter() - started, summary["num_pairs"]


def run_trl(groups, model_dir: str, args, out: Path) -> tuple[float, int]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig as TRLDPOConfig
    from trl import DPOTrainer

    rows = [{"prompt": g.messages, "chosen": [{"role": "assistant", "content": g.responses[w]}],
             "rejected": [{"role": "assistant", "content": g.responses[l]}]} for g in groups for w, l, _, _ in g.pairs()]
    config = TRLDPOConfig(
        output_dir=str(out), per_device_train_batch_size=args.pairs_per_step, num_train_epochs=1,
        learning_rate=args.lr, beta=args.beta, lr_scheduler_type="constant", max_length=args.max_length,
        report_to=[], use_cpu=True, bf16=False, gradient_checkpointing=False, save_strategy="no",
        logging_steps=10**6, disable_tqdm=True, dataloader_num_workers=0, seed=0,
    )
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_list(rows), processing_class=tokenizer)
    trainer.train()
    trainer.model.save_pretrained(out / "policy")
    return time.perf_counter() - started, len(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=128)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--pairs-per-step", type=int, default=48, help="multiple of C(K,2)")
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--beta", type=float, default=0.1)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-dpo-") as tmp:
        tmp = Path(tmp)
        model_dir = str(demo_task.build_demo_base(tmp / "model", seed=0))
        groups = make_groups(args.prompts, args.k, seed=0)
        stored = with_ref_logprobs(groups, model_dir)
        ours_s, ours_pairs = run_ours(stored, model_dir, args, tmp / "ours")
        ours_ref_s, _ = run_ours(groups, model_dir, args, tmp / "ours-ref")
        trl_s, trl_pairs = run_trl(groups, model_dir, args, tmp / "trl")
    assert ours_pairs == trl_pairs, (ours_pairs, trl_pairs)
    print(f"{args.prompts} prompts x K={args.k}: {ours_pairs} pairs, {args.pairs_per_step} pairs/step, 1 epoch, "
          f"torch threads {torch.get_num_threads()}")
    print(f"ours (stored reference log-probs): {ours_s:7.2f} s  {ours_pairs / ours_s:8.1f} pairs/s")
    print(f"ours (reference computed in-run):  {ours_ref_s:7.2f} s  {ours_pairs / ours_ref_s:8.1f} pairs/s")
    print(f"TRL {__import__('trl').__version__} DPOTrainer:            {trl_s:7.2f} s  {trl_pairs / trl_s:8.1f} pairs/s")
    print(f"ratio ours/TRL: {trl_s / ours_s:.2f}x (stored refs), {trl_s / ours_ref_s:.2f}x (refs computed in-run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
