"""Sample K responses per prompt from a policy, and score responses under a policy.

One definition of "the log-probability of a response" is used everywhere (generation, DPO, KL, NLL):
``log π(y|x) = Σ_t log π(y_t | x, y_<t)`` at temperature 1 over the tokens of ``tokenize(y) + [EOS]``,
where ``x`` is the chat-rendered prompt with its generation prompt. Generation samples with temperature
and top-p, then recomputes that sum in a separate scoring forward pass on the decoded text, so the
value stored with a sample is exactly what DPO later recomputes as its reference log-probability.

Scoring batches are right-padded ``[prompt][response][pad]``; generation batches are left-padded.
No Django here.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.ml.config import loading


@dataclass(frozen=True)
class GeneratedSample:
    text: str  # special tokens stripped
    num_tokens: int  # response tokens generated, EOS included
    ended_with_eos: bool  # False: cut at max_new_tokens
    logprob: float  # log π(text + EOS | prompt) at temperature 1 under the generating policy
    token_ids: tuple[int, ...] = ()  # the sampled response tokens, EOS included when it ended (KL is measured on these)


def load_policy(model_dir: str | Path, adapter_dir: str | Path | None = None, *, setting: str = "base_model"):
    """(model, tokenizer) in eval mode; a LoRA adapter is merged for speed. ``setting``: the config setting a
    load error is reported as (``ConfigError``), e.g. DPO's ``reference_model``."""
    with loading(setting):
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
        model = AutoModelForCausalLM.from_pretrained(model_dir)
    if adapter_dir:
        from peft import PeftModel

        with loading("adapter"):
            model = PeftModel.from_pretrained(model, adapter_dir).merge_and_unload()
    return model.eval(), tokenizer


def prompt_ids(tokenizer, messages: list[dict], max_prompt_tokens: int | None = None) -> list[int]:
    """Token ids of the chat-rendered prompt (generation prompt included), keeping its end if too long."""
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    else:
        text = "\n".join(m["content"] for m in messages) + "\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return ids[-max_prompt_tokens:] if max_prompt_tokens else ids


def response_ids(tokenizer, response: str, max_response_tokens: int | None = None) -> list[int]:
    """Token ids of a response followed by EOS (truncated responses keep their start and the EOS)."""
    ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    if max_response_tokens:
        ids = ids[: max_response_tokens - 1]
    return ids + [tokenizer.eos_token_id]


def collate_scoring(pairs: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad (prompt ids, response ids) pairs into one batch.

    >>> b = collate_scoring([([5, 6], [7, 2]), ([5], [2])], pad_id=0)
    >>> b["input_ids"].tolist(), b["response_mask"].tolist()
    ([[5, 6, 7, 2], [5, 2, 0, 0]], [[0, 0, 1, 1], [0, 1, 0, 0]])
    """
    width = max(len(p) + len(r) for p, r in pairs)
    input_ids = torch.full((len(pairs), width), pad_id, dtype=torch.long)  # (B, L)
    attention_mask = torch.zeros((len(pairs), width), dtype=torch.long)  # (B, L)
    response_mask = torch.zeros((len(pairs), width), dtype=torch.long)  # (B, L) 1 on response tokens
    for i, (p, r) in enumerate(pairs):
        input_ids[i, : len(p) + len(r)] = torch.tensor(p + r)
        attention_mask[i, : len(p) + len(r)] = 1
        response_mask[i, len(p): len(p) + len(r)] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}


def token_logprobs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """log π(token) of every response token, zero elsewhere: (B, L-1), aligned with input_ids[:, 1:]."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits  # (B, L, V)
    logp = torch.gather(F.log_softmax(logits[:, :-1].float(), dim=-1), 2, batch["input_ids"][:, 1:, None])
    return logp.squeeze(2) * batch["response_mask"][:, 1:]  # (B, L-1)


def encode_many(tokenizer, prompts: list[list[dict]], responses: list[str], max_length: int | None = None):
    """(prompt ids, response ids) per example; the prompt is cut from the left to fit ``max_length``."""
    out = []
    for messages, response in zip(prompts, responses, strict=True):
        r = response_ids(tokenizer, response, max_length // 2 if max_length else None)
        out.append((prompt_ids(tokenizer, messages, max_length - len(r) if max_length else None), r))
    return out


def sequence_logprobs(
    model, tokenizer, prompts: list[list[dict]], responses: list[str], *, batch_size: int = 64,
    max_length: int | None = None, grad: bool = False,
) -> torch.Tensor:
    """log π(response + EOS | prompt) summed over response tokens, one per example: (N,)."""
    encoded = encode_many(tokenizer, prompts, responses, max_length)
    device = next(model.parameters()).device
    out = []
    with torch.set_grad_enabled(grad):
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate_scoring(encoded[start: start + batch_size],
                                                                 tokenizer.pad_token_id).items()}
            out.append(token_logprobs(model, batch).sum(dim=1))  # (b,)
    return torch.cat(out) if out else torch.zeros(0)


def mean_token_nll(model, tokenizer, prompts: list[list[dict]], responses: list[str], *, batch_size: int = 64) -> float:
    """Mean negative log-likelihood per response token (EOS included) under ``model``, in nats."""
    encoded = encode_many(tokenizer, prompts, responses)
    total_logp, total_tokens = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate_scoring(encoded[start: start + batch_size],
                                                                 tokenizer.pad_token_id).items()}
            total_logp += token_logprobs(model, batch).sum().item()
            total_tokens += int(batch["response_mask"].sum())
    return -total_logp / max(total_tokens, 1)


def _sample_batch(model, tokenizer, prompts, *, n, temperature, top_p, max_new_tokens) -> list[list[tuple]]:
    """``n`` samples (text, num_tokens, ended, token ids) of each prompt, from one left-padded generate call."""
    encoded = [prompt_ids(tokenizer, m) for m in prompts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in encoded])  # (P, W) left-padded
    attention_mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(ids) for ids in encoded])[:, None])
    device = next(model.parameters()).device  # a policy checked while it trains may sit on a GPU
    with torch.no_grad():
        out = model.generate(
            input_ids=input_ids.to(device), attention_mask=attention_mask.long().to(device), do_sample=True, temperature=temperature,
            top_p=top_p, top_k=0, max_new_tokens=max_new_tokens, num_return_sequences=n,
            eos_token_id=tokenizer.eos_token_id, pad_token_id=pad,
        )[:, width:]  # (P·n, T) prompt-major: the n samples of prompt 0 first
    samples = []
    for row in out.tolist():
        ended = tokenizer.eos_token_id in row
        tokens = row[: row.index(tokenizer.eos_token_id)] if ended else row
        text = tokenizer.decode(tokens, skip_special_tokens=True).strip()
        samples.append((text, len(tokens) + int(ended), ended, tuple(tokens + [tokenizer.eos_token_id] * ended)))
    return [samples[i * n: (i + 1) * n] for i in range(len(prompts))]


def generate_samples(
    model_dir: str, prompts: list[list[dict]], *, k: int, temperature: float = 1.0, top_p: float = 1.0,
    max_new_tokens: int = 32, seed: int = 0, adapter_dir: str | None = None, batch_size: int = 32,
    max_attempts: int = 3, model=None, tokenizer=None,
) -> list[list[GeneratedSample]]:
    """K samples per prompt, distinct where the policy allows: duplicates are redrawn up to
    ``max_attempts`` times. Pass ``model``/``tokenizer`` to reuse a loaded policy."""
    if model is None:
        model, tokenizer = load_policy(model_dir, adapter_dir)
    torch.manual_seed(seed)
    drawn: list[list[tuple]] = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start: start + batch_size]
        drawn.extend(_sample_batch(model, tokenizer, chunk, n=k, temperature=temperature, top_p=top_p,
                                   max_new_tokens=max_new_tokens))
    for _ in range(max_attempts - 1):
        redraw = [i for i, s in enumerate(drawn) if len({sample[0] for sample in s}) < k]
        if not redraw:
            break
        extra = _sample_batch(model, tokenizer, [prompts[i] for i in redraw], n=k, temperature=temperature,
                              top_p=top_p, max_new_tokens=max_new_tokens)
        for i, more in zip(redraw, extra):
            drawn[i] = _dedupe(drawn[i], more, k)
    flat_prompts = [prompts[i] for i, s in enumerate(drawn) for _ in s]
    flat_texts = [sample[0] for s in drawn for sample in s]
    logprobs = sequence_logprobs(model, tokenizer, flat_prompts, flat_texts).tolist()
    out, pos = [], 0
    for s in drawn:
        out.append([GeneratedSample(text, n_tok, ended, logprobs[pos + j], ids)
                    for j, (text, n_tok, ended, ids) in enumerate(s)])
        pos += len(s)
    return out


def _dedupe(current: list[tuple], extra: list[tuple], k: int) -> list[tuple]:
    """Keep the first sample of each distinct text, topping up from ``extra``; duplicates fill any gap."""
    seen, kept, spare = set(), [], []
    for sample in current + extra:
        (spare if sample[0] in seen else kept).append(sample)
        seen.add(sample[0])
    return (kept + spare)[:k]


def token_kl(policy, reference, tokenizer, prompts: list[list[dict]], responses: list[list[int]], *,
             batch_size: int = 64) -> torch.Tensor:
    """KL(π ‖ π_ref) of each response's token sequence: Σ_t Σ_v π(v|h_t) (log π(v|h_t) − log π_ref(v|h_t)), (N,).

    ``responses`` are token ids (EOS included when the response ended); h_t is the chat-rendered prompt plus
    the response's first t tokens. Each term is an exact KL over the vocabulary, so every value is ≥ 0 and is
    exactly 0 when ``policy`` is ``reference``; averaged over responses sampled from π at temperature 1 it is
    an unbiased estimate of the sequence-level KL(π ‖ π_ref) (chain rule), with far less variance than the
    mean of log π(y) − log π_ref(y). Both models must share the tokenizer.
    """
    encoded = [(prompt_ids(tokenizer, m), list(r)) for m, r in zip(prompts, responses, strict=True)]
    device = next(policy.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(encoded), batch_size):
            batch = {k: v.to(device) for k, v in collate_scoring(encoded[start: start + batch_size],
                                                                 tokenizer.pad_token_id).items()}
            inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
            logp = F.log_softmax(policy(**inputs).logits[:, :-1].float(), dim=-1)  # (b, L-1, V)
            logq = F.log_softmax(reference(**inputs).logits[:, :-1].float(), dim=-1)  # (b, L-1, V)
            if logp.shape != logq.shape:
                raise ValueError(f"policy and reference differ in vocabulary: {logp.shape[-1]} vs {logq.shape[-1]}")
            per_token = (logp.exp() * (logp - logq)).sum(-1).clamp_min(0.0)  # (b, L-1) exact KL per position
            out.append((per_token * batch["response_mask"][:, 1:]).sum(dim=1))  # (b,)
    return torch.cat(out) if out else torch.zeros(0)


def sample_token_ids(tokenizer, sample: GeneratedSample) -> list[int]:
    """The tokens a sample was drawn as; samples read back from text alone are re-tokenised with EOS."""
    return list(sample.token_ids) if sample.token_ids else response_ids(tokenizer, sample.text)
