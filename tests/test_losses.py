"""The shared loss module: hand-computed values, an independent implementation, and the
closed-form minimisers of Appendix F on a tabular policy."""

import math

import numpy as np
import pytest
import torch

from linepo.games import game as games
from linepo.losses import LOSSES, PairLogProbs, preference_loss


def batch_of(values, **extra):
    t = lambda x: torch.tensor(x, dtype=torch.float64)  # noqa: E731
    return PairLogProbs(*(t(v) for v in values), **{k: t(v) for k, v in extra.items()})


def test_hand_computed_values():
    # Δπ = −1 − (−3) = 2, Δref = −2 − (−2.5) = 0.5, Δμ = −1.5 − (−2) = 0.5.
    batch = batch_of(([-1.0], [-3.0], [-2.0], [-2.5]), anchor_chosen=[-1.5], anchor_rejected=[-2.0],
                     chosen_win_rate=[0.75], rejected_win_rate=[0.25])
    eta, tau = 2.0, 0.25  # ητ = 0.5
    # DPO: −log σ((2 − 0.5)/2) = log(1 + e^{−0.75})
    assert preference_loss("dpo", batch, eta=eta).item() == pytest.approx(math.log1p(math.exp(-0.75)))
    # IPO: (2 − 0.5 − 1)² = 0.25
    assert preference_loss("ipo", batch, eta=eta).item() == pytest.approx(0.25)
    # INPO: (2 − 0.5·0.5 − 0.5·0.5 − 1)² = 0.25
    assert preference_loss("inpo", batch, eta=eta, tau=tau).item() == pytest.approx(0.25)
    # SPPO: log-ratios 1 and −0.5; targets 2(0.75−0.5)=0.5 and 2(0.25−0.5)=−0.5 → 0.25 + 0
    assert preference_loss("sppo", batch, eta=eta).item() == pytest.approx(0.25)


def reference_dpo(pc, pr, rc, rr, beta):
    """DPO as written by Rafailov et al., in numpy, with β = 1/η."""
    logits = beta * ((pc - rc) - (pr - rr))
    return np.log1p(np.exp(-logits))


def reference_ipo(pc, pr, rc, rr, beta):
    """IPO as written by Azar et al.: (h − 1/(2β))²."""
    h = (pc - rc) - (pr - rr)
    return (h - 1 / (2 * beta)) ** 2


@pytest.mark.parametrize("eta", [0.5, 3.0, 250.0])
def test_dpo_and_ipo_match_an_independent_implementation(eta):
    rng = np.random.default_rng(0)
    values = rng.normal(-40, 10, size=(4, 64))
    batch = batch_of(values)
    beta = 1 / eta
    np.testing.assert_allclose(preference_loss("dpo", batch, eta=eta).numpy(), reference_dpo(*values, beta), rtol=1e-10)
    np.testing.assert_allclose(preference_loss("ipo", batch, eta=eta).numpy(), reference_ipo(*values, beta), rtol=1e-10)


def test_inpo_reduces_to_ipo_when_eta_tau_is_one():
    rng = np.random.default_rng(1)
    values = rng.normal(-20, 5, size=(4, 16))
    anchors = rng.normal(-20, 5, size=(2, 16))
    batch = batch_of(values, anchor_chosen=anchors[0], anchor_rejected=anchors[1])
    torch.testing.assert_close(preference_loss("inpo", batch, eta=2.0, tau=0.5), preference_loss("ipo", batch, eta=2.0))


def test_losses_need_their_extra_inputs_and_names_are_known():
    batch = batch_of(([-1.0], [-2.0], [-1.0], [-2.0]))
    with pytest.raises(ValueError, match="anchor"):
        preference_loss("inpo", batch, eta=1.0, tau=0.1)
    with pytest.raises(ValueError, match="win_rate"):
        preference_loss("sppo", batch, eta=1.0)
    with pytest.raises(KeyError):
        preference_loss("kto", batch, eta=1.0)
    assert set(LOSSES) == {"dpo", "ipo", "inpo", "sppo"}


def minimise_population_loss(name, matrix, mu, reference, eta, tau=0.0):
    """Minimise E_{y,y'~μ, (y+,y−)~λ_P}[loss] over softmax logits with L-BFGS."""
    n = len(mu)
    chosen, rejected = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    chosen, rejected = chosen.ravel(), rejected.ravel()
    # Pair (y, y') drawn with prob μ(y)μ(y'); y wins with P[y, y'].
    weights = torch.tensor(np.outer(mu, mu).ravel() * matrix.ravel())
    log_ref = torch.tensor(np.log(reference))
    log_mu = torch.tensor(np.log(mu))
    logits = torch.tensor(np.log(mu), requires_grad=True)
    optimizer = torch.optim.LBFGS([logits], max_iter=500, tolerance_grad=1e-14, tolerance_change=1e-16,
                                  line_search_fn="strong_wolfe")
    c, r = torch.tensor(chosen), torch.tensor(rejected)

    def closure():
        optimizer.zero_grad()
        lp = torch.log_softmax(logits, 0)
        batch = PairLogProbs(lp[c], lp[r], log_ref[c], log_ref[r], log_mu[c], log_mu[r])
        loss = (weights * preference_loss(name, batch, eta=eta, tau=tau)).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return torch.softmax(logits, 0).detach().numpy()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ipo_minimiser_is_the_prox_step(seed):
    """Appendix F: argmin IPO(·; π, μ) = Prox(π, η P(·≻μ)) (note the + sign)."""
    rng = np.random.default_rng(seed)
    matrix = games.PAPER_MATRIX
    mu, reference = rng.dirichlet(np.ones(3), size=2)
    eta = 1.5
    fitted = minimise_population_loss("ipo", matrix, mu, reference, eta)
    np.testing.assert_allclose(fitted, games.prox(reference, eta * matrix @ mu), atol=1e-7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_inpo_miniser_is_the_regularised_step(seed):
    """argmin INPO = Prox(μ, η g_τ) ∝ π_ref^{ητ} μ^{1−ητ} exp(η P μ)."""
    rng = np.random.default_rng(seed)
    matrix = games.PAPER_MATRIX
    mu, reference = rng.dirichlet(np.ones(3), size=2)
    eta, tau = 2.0, 1 / 6
    fitted = minimise_population_loss("inpo", matrix, mu, reference, eta, tau)
    expected = games.regularized_step(matrix, mu, reference, eta=eta, tau=tau)
    np.testing.assert_allclose(fitted, expected, atol=1e-7)
    closed_form = reference ** (eta * tau) * mu ** (1 - eta * tau) * np.exp(eta * matrix @ mu)
    np.testing.assert_allclose(expected, closed_form / closed_form.sum(), atol=1e-12)


@pytest.mark.parametrize("name", ["dpo", "ipo", "inpo"])
def test_a_soft_label_is_the_mean_of_outcome_labels(name):
    """Labelling with p = P(y+ ≻ y−) fits what sampled 0/1 outcomes fit on average: for DPO the
    losses agree in expectation, for IPO/INPO up to a constant, so their gradients agree."""
    gen = torch.Generator().manual_seed(0)
    logps = [(-10 * torch.rand(64, generator=gen, dtype=torch.float64)) for _ in range(6)]
    p = torch.rand(64, generator=gen, dtype=torch.float64)
    eta, tau = 3.0, 0.2
    policy_c = logps[0].clone().requires_grad_(True)
    policy_r = logps[1].clone().requires_grad_(True)

    def loss(chosen, rejected, ref_c, ref_r, anc_c, anc_r, label=None):
        batch = PairLogProbs(chosen, rejected, ref_c, ref_r, anchor_chosen=anc_c, anchor_rejected=anc_r,
                             label_probability=label)
        return preference_loss(name, batch, eta=eta, tau=tau)

    soft = loss(policy_c, policy_r, *logps[2:], label=p)
    # The coin says y+ won with probability p (hard label as is) and y− won otherwise (swapped).
    won = loss(policy_c, policy_r, *logps[2:])
    lost = loss(policy_r, policy_c, logps[3], logps[2], logps[5], logps[4])
    expected = p * won + (1 - p) * lost
    soft_grad = torch.autograd.grad(soft.sum(), (policy_c, policy_r))
    expected_grad = torch.autograd.grad(expected.sum(), (policy_c, policy_r))
    for a, b in zip(soft_grad, expected_grad):
        torch.testing.assert_close(a, b)
    if name == "dpo":
        torch.testing.assert_close(soft, expected)
    # A hard label is p = 1, and a tie (p = ½) has no preference term at all.
    torch.testing.assert_close(loss(policy_c, policy_r, *logps[2:], label=torch.ones(64, dtype=torch.float64)), won)
    if name != "dpo":
        tie = loss(policy_c, policy_r, *logps[2:], label=torch.full((64,), 0.5, dtype=torch.float64))
        torch.testing.assert_close(tie, loss(policy_r, policy_c, logps[3], logps[2], logps[5], logps[4],
                                             label=torch.full((64,), 0.5, dtype=torch.float64)))
