"""Training losses and pairwise metrics: functions that take tensors and return tensors.

Nothing here imports anything but torch, so every function is tested on hand-computed tensors
(training/ml/tests/test_losses.py). Each loss cites the paper equation it implements on the line that
implements it. Shapes: P = pairs, N = scored sequences.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    *,
    margins: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pairwise reward-model loss, averaged over pairs (weighted when ``weights`` is given).

    chosen_rewards, rejected_rewards: (P,) scores r(x, y_w), r(x, y_l) of each pair.
    margins: (P,) optional m ≥ 0 that the chosen score must beat the rejected one by.
    weights: (P,) optional non-negative pair weights; the result is Σ w·ℓ / Σ w.
    """
    diff = chosen_rewards - rejected_rewards  # (P,)
    if margins is not None:
        diff = diff - margins  # Llama 2 (Touvron et al. 2023) eq. 2: −log σ(r(x,y_c) − r(x,y_r) − m(r))
    per_pair = -F.logsigmoid(diff)  # InstructGPT (Ouyang et al. 2022) eq. 1: −log σ(r(x,y_w) − r(x,y_l))
    if weights is None:
        return per_pair.mean()
    return (per_pair * weights).sum() / weights.sum().clamp(min=1e-12)


def reward_centering_loss(rewards: torch.Tensor) -> torch.Tensor:
    """Mean squared reward, (N,) -> scalar: pulls scores towards 0 so rewards stay comparable across runs.

    The auxiliary centering term of Eisenstein et al. 2023 ("Helping or Herding?", §3), which TRL applies
    per pair as (r_w + r_l)²; here it is applied per scored response, E[r(x, y)²].
    """
    return rewards.pow(2).mean()


def pairwise_accuracy(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Share of pairs the model orders correctly; an exact tie counts one half. (P,), (P,) -> scalar."""
    wins = (chosen_rewards > rejected_rewards).float()
    ties = (chosen_rewards == rejected_rewards).float()
    return (wins + 0.5 * ties).mean()


def mean_margin(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Mean r(x, y_w) − r(x, y_l) over pairs: how far apart the model puts chosen and rejected."""
    return (chosen_rewards - rejected_rewards).mean()


# --- PPO and GRPO. Per-token tensors are (B, T) over response tokens; ``mask`` is 1 on real tokens. ---
def _masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def ppo_policy_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *, clip_eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's clipped surrogate, negated for minimisation (Schulman et al. 2017, eq. 7):

    L^CLIP = E_t[min(r_t·Â_t, clip(r_t, 1−ε, 1+ε)·Â_t)],  r_t = π(a_t|s_t) / π_old(a_t|s_t).
    Returns (loss, ratio (B, T)); the ratio gives the clip fraction.
    """
    ratio = torch.exp(logp - old_logp)  # (B, T)
    surrogate = torch.min(ratio * advantages, torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages)
    return -_masked_mean(surrogate, mask), ratio.detach()


def ppo_value_loss(
    values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor, *, clip_eps: float
) -> torch.Tensor:
    """Squared-error value loss L^VF = (V(s_t) − V_t^targ)² (Schulman et al. 2017, eq. 9), with the value
    clipping of OpenAI baselines' PPO2: the pessimistic max of the clipped and unclipped errors, halved."""
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    error = torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * _masked_mean(error, mask)


def grpo_loss(
    logp: torch.Tensor, old_logp: torch.Tensor, ref_logp: torch.Tensor, advantages: torch.Tensor,
    mask: torch.Tensor, *, clip_eps: float, beta: float, per_sequence: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """GRPO's objective, negated (Shao et al. 2024, eq. 3):

    J = 1/G Σ_i 1/|o_i| Σ_t [min(r_{i,t}·Â_i, clip(r_{i,t}, 1−ε, 1+ε)·Â_i) − β·D_KL[π || π_ref]],
    with the per-token KL estimate of eq. 4 (k3): π_ref/π − log(π_ref/π) − 1. ``advantages`` is (B,), one
    per sequence. ``per_sequence=False`` averages over all tokens of the batch instead of per sequence
    first (DAPO's token-level mean, no length bias). Returns (loss, ratio (B, T), per-token KL (B, T)).
    """
    ratio = torch.exp(logp - old_logp)  # (B, T)
    adv = advantages.unsqueeze(1)  # (B, 1)
    surrogate = torch.min(ratio * adv, torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * adv)
    log_r = ref_logp - logp
    kl = torch.exp(log_r) - log_r - 1.0  # (B, T) eq. 4
    per_token = -(surrogate - beta * kl)
    if per_sequence:
        loss = ((per_token * mask).sum(1) / mask.sum(1).clamp(min=1.0)).mean()
    else:
        loss = _masked_mean(per_token, mask)
    return loss, ratio.detach(), kl.detach()


# --- DPO. Sequence log-probabilities are (P,): one per pair side, summed over response tokens. ---
def _dpo_sigmoid(h: torch.Tensor, *, beta: float, label_smoothing: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7) on h = Δ_w − Δ_l; ε > 0: conservative DPO (Mitchell 2023)."""
    return -(1.0 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)  # (P,)


def _dpo_ipo(h: torch.Tensor, *, beta: float, label_smoothing: float) -> torch.Tensor:
    """IPO (Azar et al. 2023, sampled loss with τ = β): (h − 1/(2β))², regressing the margin to a finite target."""
    if label_smoothing:
        raise ValueError("label_smoothing is defined for the sigmoid (DPO) loss only, not IPO")
    return (h - 1.0 / (2.0 * beta)) ** 2  # (P,)


DPO_LOSSES = {"sigmoid": _dpo_sigmoid, "ipo": _dpo_ipo}
PER_TOKEN_MARGIN = {"sigmoid": False, "ipo": True}  # IPO's log-ratios are averaged per token (Azar et al.; TRL)


def dpo_loss(
    policy_chosen: torch.Tensor, policy_rejected: torch.Tensor, ref_chosen: torch.Tensor, ref_rejected: torch.Tensor,
    *, beta: float, weights: torch.Tensor | None = None, label_smoothing: float = 0.0, loss_type: str = "sigmoid",
    rpo_alpha: float = 0.0, chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A DPO-family loss, averaged over pairs (Σ w·ℓ / Σ w with ``weights``), on Δ = log π(y|x) − log π_ref(y|x):

    ``loss_type`` "sigmoid": L = −log σ(β·(Δ_w − Δ_l)) (Rafailov et al. 2023, eq. 7); ``label_smoothing``
    ε > 0 gives conservative DPO (Mitchell 2023): (1−ε)·L + ε·L with the labels flipped.
    ``loss_type`` "ipo": L = (Δ_w/|y_w| − Δ_l/|y_l| − 1/(2β))² (Azar et al. 2023; log-ratios averaged per token,
    as the authors advised for TRL's implementation).
    ``rpo_alpha`` α > 0 adds α · NLL of the chosen reply per token, −log π(y_w|x) / |y_w| (RPO: Pang et al. 2024,
    "Iterative Reasoning Preference Optimization", L_DPO+NLL). ``chosen_lengths``/``rejected_lengths`` (P,) are
    the replies' token counts (EOS included), needed by IPO and RPO.
    Returns (loss, chosen implicit rewards (P,), rejected implicit rewards (P,)), the rewards
    r̂ = β·(log π − log π_ref) of eq. 5, detached, for accuracy and margin metrics.
    """
    chosen_delta = policy_chosen - ref_chosen  # (P,) Δ_w
    rejected_delta = policy_rejected - ref_rejected  # (P,) Δ_l
    needs_lengths = PER_TOKEN_MARGIN[loss_type] or rpo_alpha
    if needs_lengths and (chosen_lengths is None or rejected_lengths is None):
        raise ValueError(f"loss_type {loss_type!r} with rpo_alpha {rpo_alpha} needs the replies' token counts")
    if PER_TOKEN_MARGIN[loss_type]:
        h = chosen_delta / chosen_lengths.clamp(min=1) - rejected_delta / rejected_lengths.clamp(min=1)  # (P,)
    else:
        h = chosen_delta - rejected_delta  # (P,)
    per_pair = DPO_LOSSES[loss_type](h, beta=beta, label_smoothing=label_smoothing)  # (P,)
    if rpo_alpha:
        per_pair = per_pair - rpo_alpha * policy_chosen / chosen_lengths.clamp(min=1)  # Pang et al. 2024: + α·NLL(y_w)
    if weights is None:
        loss = per_pair.mean()
    else:
        loss = (per_pair * weights).sum() / weights.sum().clamp(min=1e-12)
    return loss, (beta * chosen_delta).detach(), (beta * rejected_delta).detach()  # eq. 5 without log Z(x)
