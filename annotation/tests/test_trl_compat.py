"""The `pairs` and `conversational` exports load in TRL's RewardTrainer and DPOTrainer without conversion.

A small hh-rlhf-style project is imported, exported to files, loaded with `datasets` and trained for a
few steps on a tiny Llama built here (training/ml/tiny_models.py): no hub, no download.
"""
import io
import json
import math

import pytest

from annotation.exporters import export_preferences
from annotation.importers import import_samples_from_file

pytestmark = [pytest.mark.slow, pytest.mark.django_db]

WORDS = "sun rain tree river cat dog blue green small big".split()


def hh_line(i: int) -> dict:
    question = f"Tell me about the {WORDS[i % 10]} and the {WORDS[(i * 3 + 1) % 10]}."
    shared = f"\n\nHuman: Hello, number {i}.\n\nAssistant: Hi!\n\nHuman: {question}"
    good = f"The {WORDS[i % 10]} is lovely and kind, I am glad to help."
    bad = f"No. {WORDS[(i + 5) % 10]} {WORDS[(i + 7) % 10]}."
    return {"chosen": f"{shared}\n\nAssistant: {good}", "rejected": f"{shared}\n\nAssistant: {bad}"}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from training.ml.tiny_models import build_tiny_causal_lm, build_tiny_reward_model, build_tokenizer

    root = tmp_path_factory.mktemp("tiny")
    texts = [text for i in range(16) for text in hh_line(i).values()]
    tokenizer = build_tokenizer(texts, root / "tokenizer", vocab_size=400)  # has a chat template
    sizes = dict(hidden=32, layers=1, heads=2, max_positions=256)
    return build_tiny_causal_lm(root / "lm", tokenizer, **sizes), build_tiny_reward_model(root / "rm", tokenizer, **sizes)


@pytest.fixture
def exported(tmp_path):
    """Export files of a 16-pair project: pairs as JSONL, conversational as Parquet."""
    data = "".join(json.dumps(hh_line(i)) + "\n" for i in range(16)).encode()
    import_samples_from_file(project_slug="trl", stream=io.BytesIO(data))
    from annotation.models import Project

    project = Project.objects.get(slug="trl")
    files = {}
    for fmt, file_format in (("pairs", "jsonl"), ("conversational", "parquet")):
        path = tmp_path / f"{fmt}.{file_format}"
        path.write_bytes(b"".join(export_preferences(project=project, fmt=fmt, file_format=file_format)))
        files[fmt] = path
    return files


def load(path, tmp_path):
    from datasets import load_dataset

    builder = "json" if path.suffix == ".jsonl" else "parquet"
    return load_dataset(builder, data_files=str(path), split="train", cache_dir=str(tmp_path / "hf-cache"))


def common_args(tmp_path, name: str) -> dict:
    return dict(output_dir=str(tmp_path / name), max_steps=3, per_device_train_batch_size=4, learning_rate=1e-3,
                logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, max_length=256, seed=0)


def train_and_check(trainer) -> None:
    """Training ran: every logged loss is finite and the trained model's parameters moved."""
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    assert losses and all(math.isfinite(loss) for loss in losses)
    after = dict(trainer.model.named_parameters())
    assert any(not torch_equal(before[n], after[n]) for n in before)


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b.detach())


@pytest.mark.parametrize("fmt", ["pairs", "conversational"])
def test_reward_trainer_trains_on_the_export(fmt, exported, tiny_models, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    dataset = load(exported[fmt], tmp_path)
    assert "margin" not in dataset.column_names and "tier_distance" in dataset.column_names
    _, rm_dir = tiny_models
    trainer = RewardTrainer(
        model=AutoModelForSequenceClassification.from_pretrained(rm_dir),
        args=RewardConfig(**common_args(tmp_path, f"rm-{fmt}")),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(rm_dir),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert "margin" not in batch  # the tier distance does not enter the Bradley-Terry loss
    train_and_check(trainer)


@pytest.mark.parametrize("fmt", ["pairs", "conversational"])
def test_dpo_trainer_trains_on_the_export(fmt, exported, tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    dataset = load(exported[fmt], tmp_path)
    lm_dir, _ = tiny_models
    trainer = DPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(lm_dir),
        args=DPOConfig(**common_args(tmp_path, f"dpo-{fmt}"), beta=0.1),
        train_dataset=dataset,
        processing_class=AutoTokenizer.from_pretrained(lm_dir),
    )
    train_and_check(trainer)
