"""Preference-optimisation losses on *sequence* log-probabilities, shared by the tabular
games (:mod:`linepo.sampled`) and the LLM trainer.

Every loss takes summed response log-probs ``log π(y|x)`` as tensors of shape (B,) and
returns per-example losses of shape (B,); callers reduce (mean or weighted mean). A tabular
softmax policy is a model whose sequence log-prob is one log-softmax entry.

Parameters follow the paper (Appendix F): ``eta`` is the step size η, so the KL weight is
1/η (DPO code's β = 1/η) and the IPO/INPO regression target is η/2 (= 1/(2β)). ``tau`` is
the regularisation τ of the game J_τ; INPO weights the reference by ητ. With Δx = log
x(y+) − log x(y−):

    dpo   −log σ((Δπ − Δref) / η)
    ipo   (Δπ − Δref − η/2)²                                   minimiser: Prox(ref, η P(·≻μ))
    inpo  (Δπ − ητ·Δref − (1−ητ)·Δμ − η/2)²                    minimiser: Prox(μ, η g_τ)
    sppo  Σ_{y∈{y+,y−}} (log π(y)/μ(y) − η (P̂(y≻μ) − ½))²     (Wu et al., 2024)

μ is the policy that generated the pairs ("anchor"); for IPO/DPO/SPPO the reference *is* the
policy being moved from (iterative variants pass the current policy as reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class PairLogProbs:
    """Summed response log-probs for a batch of (y+, y−) pairs; every tensor has shape (B,).

    ``anchor_*`` are log μ_k (the sampling policy, INPO only); ``*_win_rate`` are the
    estimated P̂(y ≻ μ) of each response (SPPO only).
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    anchor_chosen: torch.Tensor | None = None
    anchor_rejected: torch.Tensor | None = None
    chosen_win_rate: torch.Tensor | None = None
    rejected_win_rate: torch.Tensor | None = None


def dpo_loss(batch: PairLogProbs, *, eta: float, **_) -> torch.Tensor:
    """DPO with β = 1/η: −log σ((Δπ − Δref)/η)."""
    margin = (batch.policy_chosen - batch.policy_rejected) - (batch.reference_chosen - batch.reference_rejected)
    return -F.logsigmoid(margin / eta)


def ipo_loss(batch: PairLogProbs, *, eta: float, **_) -> torch.Tensor:
    """IPO (Azar et al.) with summed log-probs: (Δπ − Δref − η/2)²."""
    margin = (batch.policy_chosen - batch.policy_rejected) - (batch.reference_chosen - batch.reference_rejected)
    return (margin - eta / 2) ** 2


def inpo_loss(batch: PairLogProbs, *, eta: float, tau: float, **_) -> torch.Tensor:
    """INPO (Zhang et al.): (Δπ − ητ·Δref − (1−ητ)·Δμ − η/2)², μ = the sampling policy."""
    if batch.anchor_chosen is None or batch.anchor_rejected is None:
        raise ValueError("inpo_loss needs anchor_chosen/anchor_rejected: log-probs under μ_k")
    eta_tau = eta * tau
    delta_policy = batch.policy_chosen - batch.policy_rejected
    delta_reference = batch.reference_chosen - batch.reference_rejected
    delta_anchor = batch.anchor_chosen - batch.anchor_rejected
    return (delta_policy - eta_tau * delta_reference - (1 - eta_tau) * delta_anchor - eta / 2) ** 2


def sppo_loss(batch: PairLogProbs, *, eta: float, **_) -> torch.Tensor:
    """SPPO (Wu et al.): squared error of each response's log-ratio to η(P̂(y≻μ) − ½)."""
    if batch.chosen_win_rate is None or batch.rejected_win_rate is None:
        raise ValueError("sppo_loss needs chosen_win_rate/rejected_win_rate: P̂(y ≻ μ) per response")
    chosen_ratio = batch.policy_chosen - batch.reference_chosen
    rejected_ratio = batch.policy_rejected - batch.reference_rejected
    return (chosen_ratio - eta * (batch.chosen_win_rate - 0.5)) ** 2 + (
        rejected_ratio - eta * (batch.rejected_win_rate - 0.5)
    ) ** 2


#: name -> loss; the trainer and the tabular dynamics look losses up here.
LOSSES = {"dpo": dpo_loss, "ipo": ipo_loss, "inpo": inpo_loss, "sppo": sppo_loss}


def preference_loss(name: str, batch: PairLogProbs, *, eta: float, tau: float = 0.0) -> torch.Tensor:
    """Per-example loss ``name`` (a key of :data:`LOSSES`) on ``batch``; shape (B,)."""
    if name not in LOSSES:
        raise KeyError(f"unknown loss {name!r}; known: {sorted(LOSSES)}")
    return LOSSES[name](batch, eta=eta, tau=tau)
