"""Scorers: ``score(messages, texts) -> [float]`` (higher is better), what AI labelers rank with and active
selection measures doubt with. Each is built from a name or a model directory; nothing here reads the database.

- ``utility_scorer``: a rule-based function of ``(prompt_messages, response_text)`` from the operator's
  registry (``annotation.hooks``), resolved by name;
- ``reward_model_scorer``: a sequence-classification reward model, scored exactly as its trainer encoded
  sequences (``training.ml.data.encode_group``);
- ``llm_judge_scorer``: a causal LM asked "Is the reply helpful, correct and on topic? Answer:", scored
  log p(" Yes") − log p(" No") of its next token.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from annotation.hooks import hook_resolve

Scorer = Callable[[list[dict], list[str]], list[float]]
JUDGE_TEMPLATE = ("Conversation:\n{conversation}\n\nReply:\n{reply}\n\n"
                  "Is the reply helpful, correct and on topic? Answer:")


def utility_scorer(spec: str) -> Scorer:
    utility = hook_resolve(kind="utility", name=spec, location="spec")
    return lambda messages, texts: [float(utility(messages, text)) for text in texts]


def reward_model_scorer(model_dir: str | Path, *, base_model: str = "", max_length: int = 512) -> Scorer:
    """Scores from a sequence-classification reward model (full model, or a LoRA adapter on ``base_model``)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from training.ml.data import encode_group
    from training.ml.types import RankedGroup

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if base_model:
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(base_model, num_labels=1)
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    model.eval()
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    model.config.pad_token_id = pad_id

    @torch.no_grad()
    def score(messages: list[dict], texts: list[str]) -> list[float]:
        group = RankedGroup(prompt_id=0, messages=messages, responses=texts, rankings=[])
        sequences = encode_group(tokenizer, group, max_length=max_length).input_ids  # K lists of ids
        width = max(len(s) for s in sequences)
        input_ids = torch.tensor([s + [pad_id] * (width - len(s)) for s in sequences])  # (K, T)
        attention_mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences])  # (K, T)
        return model(input_ids=input_ids, attention_mask=attention_mask).logits[:, 0].float().tolist()  # (K,)

    return score


def llm_judge_scorer(model_dir: str | Path, *, max_length: int = 1024) -> Scorer:
    """Scores log p(" Yes") − log p(" No") of a local causal LM asked whether each reply is good."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from training.ml.data import render_plain

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    yes, no = (tokenizer.encode(word, add_special_tokens=False)[0] for word in (" Yes", " No"))

    @torch.no_grad()
    def score(messages: list[dict], texts: list[str]) -> list[float]:
        out = []
        for text in texts:
            prompt = JUDGE_TEMPLATE.format(conversation=render_plain(messages).strip(), reply=text)
            ids = tokenizer.encode(prompt)[-max_length:]
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1]  # (V,) next-token logits
            logp = torch.log_softmax(logits.float(), dim=-1)
            out.append(float(logp[yes] - logp[no]))
        return out

    return score
