"""Rollouts for PPO/GRPO: sample responses from a policy with per-token log-probabilities, and score them.

A rollout batch holds B = P·G sequences (G samples of each of P prompts, contiguous), each the left-padded
prompt followed by the right-padded response. Per-token tensors cover the response only: (B, T).
Scoring accepts a Python reward function and/or a sequence-classification reward model whose tokenizer may
differ from the policy's: responses are decoded to text and re-tokenised with the reward model's tokenizer.
No Django here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from transformers import AutoModelForSequenceClassification, AutoTokenizer

from training.ml.collators import pad_right
from training.ml.config import loading
from training.ml.data import encode_group
from training.ml.generation import prompt_ids
from training.ml.rl import entropy_from_logits
from training.ml.types import RankedGroup

RewardFn = Callable[[list[dict], str], float]  # (prompt_messages, response_text) -> reward


@dataclass
class Rollout:
    prompt_index: list[int]  # (B,) index into the prompt list of each sequence
    input_ids: torch.Tensor  # (B, L) prompt (left-padded to width P) then response (right-padded)
    attention_mask: torch.Tensor  # (B, L) 1 on real prompt and response tokens
    prompt_width: int  # P: responses start at column P
    response_mask: torch.Tensor  # (B, T) 1 on response tokens up to and including the first EOS
    logprobs: torch.Tensor  # (B, T) log π_old(token) of each sampled response token
    texts: list[str]  # (B,) decoded responses, special tokens removed
    ended: torch.Tensor  # (B,) bool: the response ends with EOS (not cut at max_new_tokens)

    @property
    def response_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_width:]  # (B, T)

    def select(self, index: torch.Tensor) -> "Rollout":
        """The rows ``index`` of this batch (a minibatch), keeping the same column layout."""
        rows = index.tolist()
        return Rollout(
            prompt_index=[self.prompt_index[i] for i in rows], input_ids=self.input_ids[index],
            attention_mask=self.attention_mask[index], prompt_width=self.prompt_width,
            response_mask=self.response_mask[index], logprobs=self.logprobs[index],
            texts=[self.texts[i] for i in rows], ended=self.ended[index],
        )


def position_ids_for(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` uses them, so re-scoring matches sampling."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)  # (B, L)


def response_logits(model, rollout: Rollout, temperature: float = 1.0) -> torch.Tensor:
    """Logits that predict each response token: (B, T, V), divided by the sampling temperature."""
    out = model(
        input_ids=rollout.input_ids, attention_mask=rollout.attention_mask,
        position_ids=position_ids_for(rollout.attention_mask),
    )
    logits = out.logits[:, rollout.prompt_width - 1 : -1, :]  # position t predicts token t+1
    return logits.float() / temperature


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[token] per position: (B, T, V), (B, T) -> (B, T)."""
    return torch.gather(F.log_softmax(logits, dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def response_logprobs(
    model, rollout: Rollout, temperature: float = 1.0, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probabilities (B, T) of the rollout's responses under ``model`` (and entropies)."""
    logits = response_logits(model, rollout, temperature)
    logp = token_logprobs(logits, rollout.response_ids)
    entropy = entropy_from_logits(logits) if with_entropy else None
    return logp, entropy


def _response_mask(response_ids: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """1 up to and including the first EOS, 0 after it: (B, T) -> mask (B, T), ended (B,)."""
    is_eos = response_ids == eos_id
    ended = is_eos.any(dim=1)
    eos_pos = torch.where(ended, is_eos.float().argmax(dim=1), torch.full_like(ended, response_ids.size(1), dtype=torch.long))
    cols = torch.arange(response_ids.size(1), device=response_ids.device).unsqueeze(0)  # (1, T)
    return (cols <= eos_pos.unsqueeze(1)).float(), ended


@torch.no_grad()
def sample_rollout(
    policy, tokenizer, prompts: list[list[dict]], *, samples_per_prompt: int, max_new_tokens: int,
    temperature: float = 1.0, top_p: float = 1.0, batch_size: int = 64, with_logprobs: bool = True,
    seeds: list[int] | None = None,
) -> Rollout:
    """Sample G = ``samples_per_prompt`` responses per prompt and record log π_old of each token.

    Sampling uses the global torch RNG (seed it for reproducibility). With ``seeds`` (one per prompt), the
    G samples of prompt i are drawn in a call of their own, unpadded, right after ``torch.manual_seed(seeds[i])``:
    they are then a pure function of the prompt and its seed, whichever other prompts share the batch (data
    parallelism splits a step's prompts over processes and must sample what one process would).
    Log-probabilities come from one extra forward pass at the same temperature, so they are exactly what the
    PPO ratio's denominator needs (``with_logprobs=False`` skips it for callers that recompute them anyway).
    Tensors live on the policy's device.
    """
    was_training = policy.training
    policy.eval()
    device = next(policy.parameters()).device
    eos_id = tokenizer.eos_token_id
    pad_id = eos_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id
    encoded = [prompt_ids(tokenizer, p) for p in prompts for _ in range(samples_per_prompt)]
    index = [i for i in range(len(prompts)) for _ in range(samples_per_prompt)]
    width = max(len(ids) for ids in encoded)
    prompt_input = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in encoded], device=device)  # (B, P) left-padded
    starts = torch.tensor([width - len(ids) for ids in encoded], device=device)  # (B,) first real prompt column
    prompt_mask = (torch.arange(width, device=device)[None, :] >= starts[:, None]).long()  # (B, P)
    if seeds is None:
        calls = [(None, start, min(start + batch_size, len(encoded))) for start in range(0, len(encoded), batch_size)]
    else:  # one call per prompt, its rows unpadded
        calls = [(seed, i * samples_per_prompt, (i + 1) * samples_per_prompt) for i, seed in enumerate(seeds)]
    chunks = []
    for seed, start, stop in calls:
        first = 0 if seed is None else width - len(encoded[start])  # skip the left padding of this prompt's rows
        if seed is not None:
            torch.manual_seed(seed)
        out = policy.generate(
            input_ids=prompt_input[start:stop, first:], attention_mask=prompt_mask[start:stop, first:],
            do_sample=True, temperature=temperature, top_p=top_p, top_k=0, max_new_tokens=max_new_tokens,
            eos_token_id=eos_id, pad_token_id=pad_id,
        )
        chunks.append(out[:, width - first:])
    longest = max(c.size(1) for c in chunks)
    response_ids = torch.cat([F.pad(c, (0, longest - c.size(1)), value=pad_id) for c in chunks])  # (B, T)
    response_mask, ended = _response_mask(response_ids, eos_id)
    response_ids = torch.where(response_mask.bool(), response_ids, torch.full_like(response_ids, pad_id))
    rollout = Rollout(
        prompt_index=index, input_ids=torch.cat([prompt_input, response_ids], dim=1),
        attention_mask=torch.cat([prompt_mask, response_mask.long()], dim=1), prompt_width=width,
        response_mask=response_mask, logprobs=torch.zeros_like(response_mask), ended=ended,
        texts=[t.strip() for t in tokenizer.batch_decode(response_ids, skip_special_tokens=True)],
    )
    if with_logprobs:
        rollout.logprobs = batched_logprobs(policy, rollout, temperature, batch_size) * response_mask
    policy.train(was_training)
    return rollout


@torch.no_grad()
def batched_logprobs(model, rollout: Rollout, temperature: float, batch_size: int) -> torch.Tensor:
    """response_logprobs over the whole rollout in chunks of ``batch_size`` rows: (B, T)."""
    rows = torch.arange(len(rollout.texts))
    parts = [response_logprobs(model, rollout.select(rows[i : i + batch_size]), temperature)[0]
             for i in range(0, len(rows), batch_size)]
    return torch.cat(parts)


@torch.no_grad()
def reward_model_scores(
    reward_model, rm_tokenizer, prompts: list[list[dict]], rollout: Rollout, *, max_length: int = 512,
    batch_size: int = 32,
) -> torch.Tensor:
    """Scores (B,) of a sequence-classification reward model. The decoded responses are re-tokenised with
    the reward model's own tokenizer exactly as its trainer encoded them (``data.encode_group``), so the
    reward model may use a different vocabulary from the policy."""
    sequences = []
    for row, (i, text) in enumerate(zip(rollout.prompt_index, rollout.texts)):
        group = RankedGroup(prompt_id=i, messages=prompts[i], responses=[text], rankings=[])
        sequences.extend(encode_group(rm_tokenizer, group, max_length=max_length).input_ids)
    pad_id = rm_tokenizer.pad_token_id if rm_tokenizer.pad_token_id is not None else rm_tokenizer.eos_token_id
    reward_model.config.pad_token_id = pad_id
    reward_model.eval()
    scores = []
    for start in range(0, len(sequences), batch_size):
        input_ids, attention_mask = pad_right(sequences[start : start + batch_size], pad_id)  # (b, L)
        device = next(reward_model.parameters()).device
        logits = reward_model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits  # (b, 1)
        scores.append(logits[:, 0].float())
    return torch.cat(scores).to(_device_of(rollout))


def function_scores(reward_fn: RewardFn, prompts: list[list[dict]], rollout: Rollout) -> torch.Tensor:
    """Scores (B,) of a Python reward function; a non-finite or non-numeric result is an error naming the row."""
    scores = []
    for row, (i, text) in enumerate(zip(rollout.prompt_index, rollout.texts)):
        value = reward_fn(prompts[i], text)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"reward function returned {value!r} for sample {row} (prompt {i}); expected a finite number")
        scores.append(float(value))
    return torch.tensor(scores, device=_device_of(rollout))


def _device_of(rollout) -> torch.device:
    """Where the rollout's tensors are (callers may pass a bare object with only prompt_index and texts)."""
    ids = getattr(rollout, "input_ids", None)
    return ids.device if isinstance(ids, torch.Tensor) else torch.device("cpu")


def reward_fn_unresolved(name: str) -> ValueError:
    """``config.reward_fn`` is the NAME of an operator-registered hook (``annotation.hooks``), never imported
    here: the caller resolves it and passes the callable as ``reward_fn=``."""
    return ValueError(f"reward_fn {name!r} is a registered hook name: pass the resolved callable as reward_fn=")


class RewardScorer:
    """The reward of a rollout: reward-model score plus rule-based score, whichever are given.

    ``score`` returns (total (B,), parts) where parts holds "rm_score" and/or "fn_score" tensors (B,), so
    each source is logged on its own (the over-optimisation monitor compares them).
    """

    def __init__(self, *, reward_model_dir: str | None = None, reward_fn: RewardFn | None = None,
                 max_length: int = 512, device: torch.device | str = "cpu") -> None:
        if not reward_model_dir and reward_fn is None:
            raise ValueError("a reward is required: give a reward model directory and/or a reward function")
        self.reward_fn, self.max_length = reward_fn, max_length
        self.model = self.tokenizer = None
        if reward_model_dir:
            with loading("reward_model"):
                self.tokenizer = AutoTokenizer.from_pretrained(reward_model_dir)
                self.model = AutoModelForSequenceClassification.from_pretrained(reward_model_dir).eval()
            self.model.requires_grad_(False).to(device)
            if self.model.config.num_labels != 1:
                raise ValueError(f"reward model {reward_model_dir} has {self.model.config.num_labels} outputs; expected 1")

    def score(self, prompts: list[list[dict]], rollout: Rollout) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts = {}
        if self.model is not None:
            parts["rm_score"] = reward_model_scores(self.model, self.tokenizer, prompts, rollout, max_length=self.max_length)
        if self.reward_fn is not None:
            parts["fn_score"] = function_scores(self.reward_fn, prompts, rollout)
        return sum(parts.values()), parts


def prompt_batch(n_prompts: int, *, step: int, batch_size: int, seed: int) -> list[int]:
    """Indices of the prompts of ``step`` (0-based): consecutive slices of seeded permutations, one per pass.

    A pure function of its arguments, so a resumed run picks up exactly the prompts it would have seen.
    """
    out = []
    position = step * batch_size
    while len(out) < batch_size:
        epoch, offset = divmod(position, n_prompts)
        order = torch.randperm(n_prompts, generator=torch.Generator().manual_seed(seed * 7919 + epoch)).tolist()
        take = order[offset : offset + batch_size - len(out)]
        out.extend(take)
        position += len(take)
    return out
