"""Tiny policies for the KL and health-gate tests: round 0 by a short SFT, and a degenerate "junk" policy."""
import random

from training.ml import demo_task
from training.ml.config import SFTConfig
from training.ml.trainers.sft import train_sft
from training.ml.types import NullHooks

JUNK_CHARS = "éüß€ñøå¿½→✓"


def _sft(base, examples, steps, out):
    config = SFTConfig(base_model=str(base), seed=0, max_steps=steps, learning_rate=3e-3, batch_size=32,
                       eval_every=10_000, checkpoint_every=10_000, num_threads=1, eval_fraction=0.0,
                       lr_scheduler="constant")
    return train_sft(config, examples, output_dir=out, hooks=NullHooks(), resume=False)["policy_dir"]


def junk_policy(round0_dir, out, *, steps=60, seed=0):
    """A degenerate policy like the issue's: a few demonstrations, each prefixed by non-ASCII byte junk,
    learnt by heart (its replies start with byte tokens that decode to "�" and its samples repeat)."""
    rng = random.Random(seed)
    few = demo_task.load_demonstrations()[:8] * 50
    return _sft(round0_dir, [(m, rng.choice(JUNK_CHARS) + r) for m, r in few], steps, out)


def round0_and_junk(root):
    """(round 0's policy dir, junk policy dir): SFT 100 steps on 1,000 demonstrations, then the junk SFT.

    The base keeps Llama's std 0.02 of the tiny models before issue 12's fix: the junk the issue saw, whose
    byte-junk replies re-tokenise differently from their sampled tokens in over a quarter of the samples."""
    base = demo_task.build_demo_base(root / "base", seed=0, initializer_range=0.02)
    round0_dir = _sft(base, demo_task.load_demonstrations()[:1000], 100, root / "sft")
    return round0_dir, junk_policy(round0_dir, root / "junk")
