"""Tiny local models load back with the Auto* classes, and the tokenizer speaks the chat template."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from training.ml import tiny_models
from training.ml.tiny_models import build_tiny_causal_lm, build_tiny_reward_model, build_tokenizer, synthetic_groups

TEXTS = ["the cat sat on the mat", "hello world, how are you?", "Ünïcode ✓ works too"] * 10


def test_tokenizer_round_trips_text_and_chat_template(tmp_path):
    tokenizer = build_tokenizer(TEXTS, tmp_path / "tok", vocab_size=300)
    loaded = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert len(loaded) == 300
    assert (loaded.pad_token, loaded.bos_token, loaded.eos_token, loaded.unk_token) == ("<pad>", "<s>", "</s>", "<unk>")
    assert loaded.truncation_side == "left"
    text = "never seen: ☃ 日本"  # byte-level: characters outside the training texts still encode exactly
    assert loaded.decode(loaded.encode(text, add_special_tokens=False)) == text
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    rendered = loaded.apply_chat_template(chat, tokenize=False)
    assert rendered == "<s><|user|>\nhi</s>\n<|assistant|>\nyo</s>\n"
    prompt = tokenizer.apply_chat_template(chat[:1], add_generation_prompt=True, tokenize=False)
    assert rendered.startswith(prompt) and prompt.endswith("<|assistant|>\n")


def test_tiny_models_load_with_auto_classes(tmp_path):
    tokenizer = build_tokenizer(TEXTS, tmp_path / "tok", vocab_size=300)
    lm_dir = build_tiny_causal_lm(tmp_path / "lm", tokenizer, hidden=32, layers=1, heads=2)
    rm_dir = build_tiny_reward_model(tmp_path / "rm", tokenizer, hidden=32, layers=1, heads=2)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir)
    rm = AutoModelForSequenceClassification.from_pretrained(rm_dir)
    assert rm.config.num_labels == 1 and rm.config.pad_token_id == tokenizer.pad_token_id
    batch = AutoTokenizer.from_pretrained(rm_dir)(["the cat", "hello world, how"], padding=True, return_tensors="pt")
    assert rm(**batch).logits.shape == (2, 1)
    assert lm(**batch).logits.shape == (2, batch["input_ids"].shape[1], len(tokenizer))
    again = AutoModelForSequenceClassification.from_pretrained(build_tiny_reward_model(
        tmp_path / "rm2", tokenizer, hidden=32, layers=1, heads=2))
    assert all(torch.equal(a, b) for a, b in zip(rm.state_dict().values(), again.state_dict().values()))  # seeded


def test_cli_builds_all_three(tmp_path, capsys):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS), encoding="utf-8")
    tiny_models.main(["--texts", str(corpus), "--out", str(tmp_path / "out"), "--vocab-size", "300", "--hidden", "32"])
    for name in ("tokenizer", "causal_lm", "reward_model"):
        assert (tmp_path / "out" / name / "tokenizer.json").is_file()
    assert "reward model:" in capsys.readouterr().out


def test_synthetic_groups_rank_by_the_good_word():
    groups = synthetic_groups(20, 4, seed=1)
    assert len(groups) == 20 and all(len(g.responses) == 4 for g in groups)
    for group in groups:
        counts = [r.split().count("sunny") for r in group.responses]
        for chosen, rejected, _, _ in group.pairs():
            assert counts[chosen] > counts[rejected]
    assert synthetic_groups(20, 4, seed=1) == groups


def test_a_tiny_causal_lm_is_initialised_at_its_width_scale(tmp_path):
    """std hidden ** -0.5 (0.125 at width 64), not Llama's 0.02, which left round 0's attention uniform: the
    demo's SFT policy ignored its prompt (docs/loop.md, "Round 0 ignored its prompt")."""
    tokenizer = build_tokenizer(["the cat sat on the mat"] * 10, tmp_path / "tok", vocab_size=300)
    for hidden, expected in ((64, 0.125), (16, 0.25)):
        model = AutoModelForCausalLM.from_pretrained(
            build_tiny_causal_lm(tmp_path / f"lm{hidden}", tokenizer, hidden=hidden, layers=1, heads=2))
        assert model.config.initializer_range == pytest.approx(expected)
        weight = model.model.layers[0].self_attn.q_proj.weight
        assert weight.std().item() == pytest.approx(expected, rel=0.1)
    kept = AutoModelForCausalLM.from_pretrained(
        build_tiny_causal_lm(tmp_path / "lm-old", tokenizer, hidden=64, layers=1, heads=2, initializer_range=0.02))
    assert kept.model.layers[0].self_attn.q_proj.weight.std().item() == pytest.approx(0.02, rel=0.1)
