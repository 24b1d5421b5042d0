"""Preference-optimisation losses on *sequence* log-probabilities, shared by the tabular
games (:mod:`linepo.games.sampled`) and the LLM trainer.

Every loss takes summed response log-probs ``log π(y|x)`` as tensors of shape (B,) and
returns per-example losses of shape (B,); callers reduce (mean or weighted mean). A tabular
softmax policy is a model whose sequence log-prob is one log-softmax entry.

Parameters follow the paper (Appendix F): ``eta`` is the step size η, so the KL weight is
1/η (DPO code's β = 1/η) and the IPO/INPO regression target is η/2 (= 1/(2β)). ``tau`` is
the regularisation τ of the game J_τ; INPO weights the reference by ητ. With Δx = log
x(y+) − log x(y−) and p = P(y+ ≻ y−) the label (1 for a hard label):

    dpo   −p log σ((Δπ − Δref)/η) − (1−p) log σ(−(Δπ − Δref)/η)
    ipo   (Δπ − Δref − η(p − ½))²                              minimiser: Prox(ref, η P(·≻μ))
    inpo  (Δπ − ητ·Δref − (1−ητ)·Δμ − η(p − ½))²               minimiser: Prox(μ, η g_τ)
    sppo  Σ_{y∈{y+,y−}} (log π(y)/μ(y) − η (P̂(y≻μ) − ½))²     (Wu et al., 2024)

With p = 1 the IPO/INPO target is the paper's η/2. A soft label p = P(y+ ≻ y−) is the mean
of the 0/1 outcome label over the oracle's coin, and a squared loss's minimiser depends on
its target only through that mean (E(x − T)² = (x − E T)² + Var T): probability labels fit
the same Prox step as sampled outcomes, without the coin's variance. Ties (p = ½) then pull
the pair's log-ratio to the reference/anchor mix instead of to a random ±η/2.

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
    estimated P̂(y ≻ μ) of each response (SPPO only); ``label_probability`` is
    P(y+ ≻ y−), the pair's label (None: a hard label, 1).
    """

    policy_chosen: torch.Tensor
    policy_rejected: torch.Tensor
    reference_chosen: torch.Tensor
    reference_rejected: torch.Tensor
    anchor_chosen: torch.Tensor | None = None
    anchor_rejected: torch.Tensor | None = None
    chosen_win_rate: torch.Tensor | None = None
    rejected_win_rate: torch.Tensor | None = None
    label_probability: torch.Tensor | None = None

    def target_sign(self) -> torch.Tensor | float:
        """2p − 1 ∈ [−1, 1]: the IPO/INPO target is η/2 times this (1 for a hard label)."""
        return 1.0 if self.label_probability is None else 2 * self.label_probability - 1


def dpo_loss(batch: PairLogProbs, *, eta: float, **_) -> torch.Tensor:
    """DPO with β = 1/η: −log σ((Δπ − Δref)/η), the cross-entropy to p for a soft label."""
    margin = (batch.policy_chosen - batch.policy_rejected) - (batch.reference_chosen - batch.reference_rejected)
    if batch.label_probability is None:
        return -F.logsigmoid(margin / eta)
    p = batch.label_probability
    return -p * F.logsigmoid(margin / eta) - (1 - p) * F.logsigmoid(-margin / eta)


def ipo_loss(batch: PairLogProbs, *, eta: float, **_) -> torch.Tensor:
    """IPO (Azar et al.) with summed log-probs: (Δπ − Δref − η(p − ½))²; η/2 for a hard label."""
    margin = (batch.policy_chosen - batch.policy_rejected) - (batch.reference_chosen - batch.reference_rejected)
    return (margin - eta / 2 * batch.target_sign()) ** 2


def inpo_loss(batch: PairLogProbs, *, eta: float, tau: float, **_) -> torch.Tensor:
    """INPO (Zhang et al.): (Δπ − ητ·Δref − (1−ητ)·Δμ − η(p − ½))², μ = the sampling policy."""
    if batch.anchor_chosen is None or batch.anchor_rejected is None:
        raise ValueError("inpo_loss needs anchor_chosen/anchor_rejected: log-probs under μ_k")
    eta_tau = eta * tau
    delta_policy = batch.policy_chosen - batch.policy_rejected
    delta_reference = batch.reference_chosen - batch.reference_rejected
    delta_anchor = batch.anchor_chosen - batch.anchor_rejected
    target = eta / 2 * batch.target_sign()
    return (delta_policy - eta_tau * delta_reference - (1 - eta_tau) * delta_anchor - target) ** 2


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
