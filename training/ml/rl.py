"""Pure-tensor helpers for policy-gradient RLHF: masking, whitening, GAE, group advantages, KL.

Everything here takes and returns torch tensors and imports nothing but torch, so each function is tested
on tiny hand-computed tensors (training/ml/tests/test_rl.py). Shapes: B = sequences, T = response tokens;
``mask`` is 1.0 on real response tokens and 0.0 on padding (responses are right-padded).
"""
from __future__ import annotations

import math
from typing import Callable

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of x over positions where mask is 1 (over all of them, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of x over the masked positions (Bessel-corrected when ``unbiased`` and n > 1)."""
    mean = masked_mean(x, mask)
    n = mask.sum()
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased and n > 1:
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
    total: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """(x - mean) / std over the masked positions; padding positions come back as 0.

    With ``shift_mean=False`` the mean is added back (only the scale changes), as is usual for rewards.
    ``total`` (data parallelism: the sum of a tensor over the processes that hold the rest of the batch) makes
    the mean and the variance those of the whole batch, as one process holding all of it computes them; a
    process that holds none of the batch passes an all-zero ``mask``.
    """
    if total is None:
        mean, var = masked_mean(x, mask), masked_var(x, mask)
    else:
        sums = total(torch.stack([(x * mask).sum(), mask.sum()]))  # (2,) Σx, n over all processes
        n = sums[1]
        mean = sums[0] / n.clamp(min=1.0)
        var = total(((x - mean) ** 2 * mask).sum()) / n.clamp(min=1.0)
        if n > 1:
            var = var * n / (n - 1)  # Bessel, as masked_var
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask


def gae_advantages(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, *, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016, eq. 16) over right-padded sequences.

    δ_t = r_t + γ·V(s_{t+1}) − V(s_t);  A_t = Σ_l (γλ)^l δ_{t+l};  returns R_t = A_t + V(s_t).
    V after the last real token is 0 (the episode ends there). Returns (advantages, returns), both (B, T),
    zero on padding.
    """
    rewards, values, mask = rewards * mask, values * mask, mask.to(rewards.dtype)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # V(s_{t+1})
    next_adv = torch.zeros_like(next_value)  # A_{t+1}
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_adv) * mask[:, t]
        # a padded position passes nothing back: the next real step (t-1) sees V=0, A=0 after the end
        next_value = values[:, t] * mask[:, t]
        next_adv = advantages[:, t]
    returns = (advantages + values) * mask
    return advantages, returns


def group_advantages(
    rewards: torch.Tensor, group_size: int, *, scale: bool = True, eps: float = 1e-4
) -> torch.Tensor:
    """GRPO's outcome advantages (Shao et al. 2024, §4.1.2): Â_i = (r_i − mean(r_group)) / std(r_group).

    ``rewards`` is (B,) with the G = ``group_size`` samples of each prompt contiguous; std is the sample std
    (as in TRL). With ``scale=False`` only the mean is removed (Dr. GRPO, Liu et al. 2025). Returns (B,).
    """
    if rewards.dim() != 1 or rewards.numel() % group_size:
        raise ValueError(f"rewards must be 1-D with a multiple of group_size={group_size} entries, got {tuple(rewards.shape)}")
    grouped = rewards.view(-1, group_size)  # (P, G)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        std = grouped.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(grouped[:, :1])
        centred = centred / (std + eps)
    return centred.reshape(-1)


# Per-token estimators of KL(π || π_ref) from samples of π (Schulman 2020, "Approximating KL divergence").
# r = π_ref(x)/π(x); each takes log π and log π_ref of the sampled tokens and returns a tensor of the same shape.
def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = −log r = log π − log π_ref: unbiased, can be negative per token (the InstructGPT penalty)."""
    return logp - ref_logp


def kl_k2(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k2 = ½(log r)²: biased, always ≥ 0, low variance."""
    return 0.5 * (ref_logp - logp) ** 2


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = r − 1 − log r: unbiased and always ≥ 0 (GRPO, Shao et al. 2024 eq. 4)."""
    log_ratio = ref_logp - logp
    return torch.exp(log_ratio) - 1.0 - log_ratio


KL_ESTIMATORS: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "k1": kl_k1,
    "k2": kl_k2,
    "k3": kl_k3,
}


def kl_penalised_rewards(
    scores: torch.Tensor, logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, *, kl_coef: float,
    estimator: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """InstructGPT's per-token reward (Ouyang et al. 2022, eq. 2; Ziegler et al. 2019):

    r_t = −β·KL_t on every response token, plus the sequence score r(x, y) on its last real token.
    ``scores`` is (B,), the rest (B, T). Returns (rewards (B, T), per-token KL (B, T)), zero on padding.
    """
    kl = KL_ESTIMATORS[estimator](logp, ref_logp) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(dim=1).long() - 1).clamp(min=0)  # (B,) index of the last real token
    rewards[torch.arange(rewards.size(0)), last] += scores * (mask.sum(dim=1) > 0)
    return rewards, kl


def clip_fraction(ratio: torch.Tensor, mask: torch.Tensor, clip_eps: float) -> torch.Tensor:
    """Share of real tokens whose probability ratio π/π_old fell outside [1 − ε, 1 + ε]."""
    clipped = ((ratio - 1.0).abs() > clip_eps).to(ratio.dtype)
    return masked_mean(clipped, mask)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Per-position entropy H = −Σ p log p of the softmax over the last dim: (..., V) -> (...)."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return -(logp.exp() * logp).sum(dim=-1)


class FixedKLController:
    """A constant KL coefficient β."""

    def __init__(self, kl_coef: float) -> None:
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. 2019, §2.2: β_{t+1} = β_t·(1 + K_β·e_t), e_t = clip((KL_t − KL_target)/KL_target, ±0.2).

    ``K_β = n_steps / horizon``, so β moves at most 20% per ``horizon`` samples.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError("adaptive KL needs target > 0 and horizon > 0")
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):
            return
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon
