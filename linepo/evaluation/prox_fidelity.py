"""Prox fidelity: how far each LLM training step lands from the exact Prox step it stands for.

It is long because the targets of every loss and schedule, their exact analogue and the per-step and
per-run tables belong together (one definition of "the step's target").

The paper's theorem assumes every training step computes a Prox step exactly. Under the
synthetic oracle a policy's distribution over the oracle's categories is known exactly per
prompt (:func:`linepo.evaluation.exploitability.exact_category_probs`), so for every step
k → k+1 of a run this module computes, per eval prompt x:

- *measured* distributions over the categories of the oracle's augmented game (its own
  categories and ``unmatched``, which loses to every category): μ_k(·|x) of the step's
  sampler (the policy that sampled its pairs: its parent, except in Mirror-Prox's and OMWU's
  steps, :mod:`linepo.workflow.schedules`), π_ref(·|x) of its reference and μ_{k+1}(·|x) of the policy it
  trained. All are read on the *eval* prompts, exactly as the exploitability report reads
  them; entries below :data:`FLOOR` (float32 noise) are raised to it and rows renormalised;
- the step's exact **target** T(·|x) from the measured μ_k and π_ref (:func:`prox_target`);
- ``kl_to_target`` = mean_x KL(μ_{k+1}(·|x) ‖ T(·|x)) and ``tv_to_target`` = mean_x
  ½ Σ_c |μ_{k+1}(c|x) − T(c|x)|.

**KL direction.** A Prox step from a base point b maximises F(z) = ⟨g, z⟩ − KL(z ‖ b) over the
simplex, and its maximiser is T = b e^g / Z. For any z, F(T) − F(z) = KL(z ‖ T): KL(trained ‖ target) is
exactly how much Prox objective the trained step gave up, the quantity inexact-prox analyses
bound. (It is finite: every target has full support.)

**Targets by loss** (the ``loss`` of the step in :mod:`linepo.algorithms`; η is the step
size, ητ INPO's ``eta_tau``; pairs y, y' drawn from μ_k ⊗ μ_k and labelled by P):

- ``inpo`` (INPO, LINE-PO): T ∝ π_ref^{ητ} μ_k^{1−ητ} exp(η P μ_k) =
  :func:`linepo.games.game.regularized_step` with τ = ητ/η, the exact minimiser of the INPO
  loss over all policies (Appendix F). A step whose anchor a is not its sampler (EGPO's full
  step: a = π^t; MNPO: the geometric mixture a = Π_j π_j^{w_j} of past iterates, whose log the
  scored node holds) names it (``anchor`` in the spec): T ∝ π_ref^{ητ} a^{1−ητ} exp(η P μ_k);
- ``ipo`` (one-pass IPO: π_ref = μ_k = SFT; iterative IPO: π_ref = μ_k; Mirror-Prox and OMWU:
  π_ref = π^t, μ_k the half or full step's sampler): T ∝ π_ref exp(η P μ_k)
  = Prox(π_ref, η P(·≻μ_k)), the exact minimiser of the IPO loss (Azar et al.); with
  π_ref = μ_k it is the mirror-descent step of :func:`linepo.games.game.mirror_descent`;
- ``sppo``: the same T = Prox(μ_k, η P(·≻μ_k)) — the step SPPO approximates (its exact twin
  ``md`` in the registry). SPPO's squared loss fixes the log-partition at η/2, so its minimiser
  over normalised policies is not exactly T; that gap counts as infidelity here;
- ``dpo`` (one-pass DPO, Iter-DPO) has no Prox interpretation: DPO fits a Bradley–Terry
  model, log π/π_ref(y) − log π/π_ref(y') = η logit P(y≻y'), which no policy satisfies for an
  intransitive P. Its target is what the tabular analogue (``linepo game --algorithm
  iter_dpo``) converges to with infinitely many pairs: the minimiser over category
  distributions of the expected DPO loss on pairs from μ_k ⊗ μ_k (a convex problem in
  log π/π_ref, :func:`dpo_fit`; the same minimiser as the twin's
  :func:`linepo.games.sampled.fit_policy` on expected counts). Where a category loses with
  certainty (``unmatched``), the loss has an infimum, not a minimum (that category's mass → 0);
  the fit stops at a tiny mass there, so a trained policy that keeps some ``unmatched`` mass
  pays for it in KL roughly in proportion to that mass.

These are targets of the *idealised* step: pairs drawn from μ_k itself, every pair kept,
labelled by P. Whatever the pipeline does otherwise — a sampling temperature ≠ 1 or top-p < 1
(pairs then come from a tempered μ_k), ``best_vs_worst`` selection, few pairs per prompt,
responses cut at ``max_new_tokens``, too large or too small a learning rate or too few epochs,
training prompts that are not the eval prompts — shows up as distance to the target. The
targets act on category marginals: for IPO and SPPO that is exactly the marginal of the
response-level target (P depends on the category only); for INPO's geometric mixture of π_ref
and μ_k only when the two agree on the responses within each category (one text per
(prompt, style), as the embedded default has; otherwise Σ_{y∈c} π_ref(y)^{ητ} μ_k(y)^{1−ητ} falls
below π_ref(c)^{ητ} μ_k(c)^{1−ητ}, by Hölder, and the response-level target's marginal differs).

**Exact analogue.** :func:`analogue_trajectory` starts from the measured SFT distributions
and applies the exact targets of the run's schedule, each from the *analogue's* own previous
iterate and reference (the iterate the schedule names: SFT for INPO, the previous iterate for
iterative IPO and SPPO, the iterate at the last move for LINE-PO), never a measured step: the
tabular dynamics :mod:`linepo.games.game` would run per prompt. Its exploitability after each
step sits beside the measured one; the target's own exploitability is the one-step-ahead
analogue (the exact step from the measured μ_k).

Exploitability is the exploitability report's: per prompt max_j (P d)_j − ½ (half the
augmented game's duality gap), averaged over prompts.

    linepo prox-fidelity --spec SPEC --prompts eval.parquet --tsv run.tsv --probs run.json
    linepo prox-fidelity-table --run inpo=results/runs/inpo/prox_fidelity.tsv --tsv t.tsv --runs-tsv r.tsv
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from linepo.errors import InputError
from linepo.games.game import duality_gap, prox, regularized_step, win_rates_against

#: Probabilities below this are raised to it (and rows renormalised) before any log: the
#: exact readout's float32 noise is far above it, and log 0 would make targets degenerate.
FLOOR = 1e-12
#: The losses that have a target here (every loss of linepo.losses).
TARGET_LOSSES = ("inpo", "ipo", "sppo", "dpo")
#: Columns of a run's per-step table (results/runs/<run>/prox_fidelity.tsv).
COLUMNS = ("run", "algorithm", "step", "round", "split", "loss", "eta", "eta_tau", "kl_to_target",
           "kl_to_target_max", "tv_to_target", "measured_exploitability", "target_exploitability",
           "analogue_exploitability", "kl_to_analogue", "start_exploitability", "method", "policy")
#: Columns of the per-run summary (results/summary/prox_fidelity_runs.tsv).
RUN_COLUMNS = ("run", "algorithm", "steps", "median_kl_to_target", "max_kl_to_target", "median_tv_to_target",
               "start_exploitability", "final_measured_exploitability", "final_analogue_exploitability",
               "analogue_gap", "final_target_exploitability", "kl_per_step")


@dataclass(frozen=True)
class StepSpec:
    """One training step of a run, as the targets need it. Iterate 0 is the SFT policy and
    iterate k the policy after step k; the step's sampler μ_k is iterate ``sampler``, by
    default ``step − 1`` (a two-step schedule's spec names it: Mirror-Prox's and OMWU's
    targets are Prox(π_ref, η P(·≻sampler)), whichever iterate the fit started from)."""

    step: int  #: 1-based
    round: int
    split: str
    loss: str  #: its loss in linepo.losses
    eta: float  #: the step size η
    eta_tau: float | None  #: INPO's ητ (loss inpo only)
    reference: int  #: the iterate that is this step's π_ref (0 ≤ reference < step)
    sampler: int | None = None  #: the iterate that sampled its pairs (0 ≤ sampler < step); None: step − 1
    #: inpo steps of MNPO and EGPO: ((iterate, weight), ...) whose geometric mixture is the
    #: anchor; None: the sampler
    anchor: tuple | None = None

    @property
    def mu(self) -> int:
        """The index of the step's sampler μ_k."""
        return self.step - 1 if self.sampler is None else self.sampler


def steps_from_spec(steps: list) -> list[StepSpec]:
    """StepSpecs from a run's JSON step list (``linepo.workflow.wiring.Wiring.prox_fidelity_spec``).

    Raises:
        InputError: a step that is not numbered 1, 2, ..., an unknown loss, a non-positive η,
            an INPO step without ητ in (0, 1], or a reference that is not an earlier iterate.
    """
    if not isinstance(steps, list) or not steps:
        raise InputError(f"steps: a non-empty list of steps, got {steps!r:.80}")
    out = []
    for k, item in enumerate(steps, start=1):
        try:
            spec = StepSpec(int(item["step"]), int(item["round"]), str(item["split"]), str(item["loss"]),
                            float(item["eta"]), None if item.get("eta_tau") is None else float(item["eta_tau"]),
                            int(item["reference"]), None if item.get("sampler") is None else int(item["sampler"]),
                            None if item.get("anchor") is None else
                            tuple((int(i), float(w)) for i, w in item["anchor"]))
        except (KeyError, TypeError, ValueError) as err:
            raise InputError(f"steps[{k - 1}]: needs step, round, split, loss, eta and reference ({err})") from None
        if spec.step != k:
            raise InputError(f"steps[{k - 1}]: step {spec.step}, expected {k} (steps are numbered 1, 2, ...)")
        check_parameters(spec.loss, spec.eta, spec.eta_tau, f"steps[{k - 1}]")
        if not 0 <= spec.reference < k:
            raise InputError(f"steps[{k - 1}]: reference {spec.reference} is not an earlier iterate (0..{k - 1})")
        if not 0 <= spec.mu < k:
            raise InputError(f"steps[{k - 1}]: sampler {spec.mu} is not an earlier iterate (0..{k - 1})")
        if spec.anchor is not None and (not spec.anchor or any(not 0 <= i < k or not w > 0 for i, w in spec.anchor)):
            raise InputError(f"steps[{k - 1}]: anchor {list(spec.anchor)} needs earlier iterates with positive weights")
        out.append(spec)
    return out


def check_parameters(loss: str, eta: float, eta_tau: float | None, where: str = "step") -> None:
    if loss not in TARGET_LOSSES:
        raise InputError(f"{where}: unknown loss {loss!r}; known: {', '.join(TARGET_LOSSES)}")
    if not (math.isfinite(eta) and eta > 0):
        raise InputError(f"{where}: eta must be a positive number, got {eta!r}")
    if loss == "inpo" and (eta_tau is None or not 0 < eta_tau <= 1):
        raise InputError(f"{where}: an inpo step needs eta_tau in (0, 1], got {eta_tau!r}")


def distributions(probs, n: int, name: str = "distributions") -> np.ndarray:
    """``probs`` as a (prompts, n) array of rows on the simplex, floored at :data:`FLOOR`.

    Raises:
        InputError: not (prompts, n), an entry negative or not finite, or a row not summing to 1
            within 1e-4.
    """
    d = np.asarray(probs, dtype=float)
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2 or d.shape[1] != n or d.shape[0] == 0:
        raise InputError(f"{name}: needs (prompts, {n}) probabilities (one per category), got shape {d.shape}")
    if not np.all(np.isfinite(d)) or np.any(d < 0):
        raise InputError(f"{name}: probabilities must be finite and non-negative")
    sums = d.sum(axis=1)
    if np.any(np.abs(sums - 1) > 1e-4):
        row = int(np.argmax(np.abs(sums - 1)))
        raise InputError(f"{name}: row {row} sums to {sums[row]:.6g}, not 1")
    return floored(d)


def floored(d: np.ndarray) -> np.ndarray:
    """Rows with every entry below :data:`FLOOR` raised to it and renormalised (others untouched)."""
    low = (d < FLOOR).any(axis=1)
    if not low.any():
        return d
    d = d.copy()
    d[low] = np.maximum(d[low], FLOOR)
    d[low] /= d[low].sum(axis=1, keepdims=True)
    return d


def prox_target(loss: str, matrix, mu, reference, *, eta: float, eta_tau: float | None = None,
                anchor=None) -> np.ndarray:
    """The exact target of one step on one prompt, from the sampler μ_k and the reference
    (both length-n distributions with full support), and for an inpo step whose anchor is not
    μ_k its (unnormalised, positive) anchor; see the module doc for each loss."""
    matrix = np.asarray(matrix, dtype=float)
    check_parameters(loss, eta, eta_tau)
    if loss == "inpo":
        return regularized_step(matrix, mu, reference, eta=eta, tau=eta_tau / eta, anchor=anchor)
    if loss in ("ipo", "sppo"):
        return prox(reference, eta * win_rates_against(matrix, mu))
    return prox(reference, dpo_fit(matrix, np.asarray(mu)[None, :], eta=eta)[0])


def prox_targets(loss: str, matrix, mu, reference, *, eta: float, eta_tau: float | None = None,
                 anchor=None) -> np.ndarray:
    """:func:`prox_target` for every prompt: (prompts, n) from two (prompts, n) arrays (and
    ``anchor``, (prompts, n) or None)."""
    if loss == "dpo":  # one batched fit for all prompts
        check_parameters(loss, eta, eta_tau)
        fitted = dpo_fit(np.asarray(matrix, dtype=float), np.asarray(mu, dtype=float), eta=eta)
        rows = [prox(r, u) for r, u in zip(reference, fitted)]
    else:
        anchors = [None] * len(mu) if anchor is None else anchor
        rows = [prox_target(loss, matrix, m, r, eta=eta, eta_tau=eta_tau, anchor=a)
                for m, r, a in zip(mu, reference, anchors)]
    return np.maximum(np.vstack(rows), 1e-300)  # an exp underflow is a tiny mass, not an impossible one


def dpo_fit(matrix, mu, *, eta: float, tolerance: float = 1e-9, iterations: int = 500) -> np.ndarray:
    """u = log π/π_ref (up to a constant per prompt) minimising DPO's expected loss on pairs from
    μ ⊗ μ labelled by P (soft labels), for every row of ``mu``: the policy is Prox(π_ref, u).

    DPO's loss depends on π only through u: L(u) = Σ_{i≠j} μ_i μ_j P_ij softplus(−(u_i − u_j)/η),
    convex; damped Newton, all prompts at once (the tabular twin's torch fit,
    :func:`linepo.games.sampled.fit_policy`, which ``tests/test_prox_fidelity.py`` checks it
    against, takes about a second per prompt). Where the loss has only an infimum (a category that
    loses surely) it stops where every gradient entry is below ``tolerance``: a tiny mass there.
    """
    from scipy.special import expit

    num, n = mu.shape
    weights = mu[:, :, None] * mu[:, None, :] * matrix[None]  # (N, n, n): i chosen over j
    weights[:, np.arange(n), np.arange(n)] = 0.0
    weights /= weights.sum(axis=(1, 2), keepdims=True)

    def margins_and_loss(u):
        margin = (u[:, :, None] - u[:, None, :]) / eta
        return margin, (weights * np.logaddexp(0.0, -margin)).sum(axis=(1, 2))

    u = np.zeros((num, n))
    margin, loss = margins_and_loss(u)
    for _ in range(iterations):
        pull = weights * expit(-margin) / eta
        gradient = pull.sum(axis=1) - pull.sum(axis=2)  # (N, n)
        active = np.abs(gradient).max(axis=1) >= tolerance
        if not active.any():
            break
        curvature = weights * expit(margin) * expit(-margin) / eta**2
        coupling = curvature + curvature.transpose(0, 2, 1)
        hessian = np.eye(n)[None] * coupling.sum(axis=2)[:, :, None] - coupling + 1.0  # + 11ᵀ: fixes the shift
        step = np.linalg.solve(hessian, gradient[:, :, None])[:, :, 0]
        step *= np.minimum(1.0, 2 * eta / np.maximum(np.abs(step).max(axis=1, keepdims=True), 1e-300))
        step[~active] = 0.0
        scale = np.ones((num, 1))
        for _ in range(40):  # backtracking: Armijo decrease on every active prompt
            candidate = u - scale * step
            new_margin, new_loss = margins_and_loss(candidate)
            bad = new_loss > loss - 1e-4 * scale[:, 0] * (gradient * step).sum(axis=1)
            if not (bad & active).any():
                break
            scale[bad & active] *= 0.5
        u, margin, loss = candidate, new_margin, new_loss
    return u


def kl_per_prompt(p, q) -> np.ndarray:
    """KL(p_x ‖ q_x) for every row x (0·log 0 = 0); rows of q must be positive where p is."""
    p, q = np.asarray(p, dtype=float), np.asarray(q, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)
    return terms.sum(axis=1)


def tv_per_prompt(p, q) -> np.ndarray:
    """Total variation ½ Σ_c |p_x(c) − q_x(c)| for every row x."""
    return 0.5 * np.abs(np.asarray(p, dtype=float) - np.asarray(q, dtype=float)).sum(axis=1)


def exploitability(matrix, dists) -> float:
    """Mean over prompts of max_j (P d_x)_j − ½ (the exploitability report's number)."""
    matrix = np.asarray(matrix, dtype=float)
    return float(np.mean([0.5 * duality_gap(matrix, d) for d in np.atleast_2d(dists)]))


def analogue_trajectory(matrix, start, steps: list[StepSpec]) -> list[np.ndarray]:
    """The exact analogue: iterates 0..K per prompt, iterate 0 = ``start`` (the measured SFT
    distributions), iterate k = the target of step k from its sampler (iterate k − 1 unless
    the step names another) and the iterate the step names as its reference."""
    iterates = [np.asarray(start, dtype=float)]
    for spec in steps:  # floored like the measured iterates: a mass below FLOOR is not measurable
        iterates.append(floored(prox_targets(spec.loss, matrix, iterates[spec.mu], iterates[spec.reference],
                                             eta=spec.eta, eta_tau=spec.eta_tau, anchor=anchor_of(spec, iterates))))
    return iterates


def anchor_of(spec: StepSpec, iterates: list):
    """The step's anchor Π_j iterate_j^{w_j} (unnormalised; None when it is the sampler)."""
    if spec.anchor is None:
        return None
    return np.exp(sum(w * np.log(iterates[i]) for i, w in spec.anchor))


def fidelity_rows(matrix, measured: list, steps: list[StepSpec], *, run: str = "", algorithm: str = "",
                  policies=None) -> list[dict]:
    """One row per step (:data:`COLUMNS`) from the measured iterates 0..K, each (prompts, n).

    Raises:
        InputError: the matrix is not n × n for the distributions' n, a wrong number of iterates,
            or iterates over different prompt counts.
    """
    matrix = np.asarray(matrix, dtype=float)
    if matrix.ndim != 2 or matrix.shape[0] != matrix.shape[1]:
        raise InputError(f"matrix: must be square, got shape {matrix.shape}")
    n = matrix.shape[0]
    if len(measured) != len(steps) + 1:
        raise InputError(f"measured: needs {len(steps) + 1} iterates (SFT and one per step), got {len(measured)}")
    measured = [distributions(d, n, f"iterate {i}") for i, d in enumerate(measured)]
    if len({d.shape[0] for d in measured}) != 1:
        raise InputError(f"measured: iterates over different numbers of prompts: {[d.shape[0] for d in measured]}")
    analogue = analogue_trajectory(matrix, measured[0], steps)
    start = exploitability(matrix, measured[0])
    rows = []
    for spec in steps:
        trained, mu, reference = measured[spec.step], measured[spec.mu], measured[spec.reference]
        target = prox_targets(spec.loss, matrix, mu, reference, eta=spec.eta, eta_tau=spec.eta_tau,
                              anchor=anchor_of(spec, measured))
        kl = kl_per_prompt(trained, target)
        rows.append({
            "run": run, "algorithm": algorithm, "step": spec.step, "round": spec.round, "split": spec.split,
            "loss": spec.loss, "eta": spec.eta, "eta_tau": spec.eta_tau,
            "kl_to_target": float(kl.mean()), "kl_to_target_max": float(kl.max()),
            "tv_to_target": float(tv_per_prompt(trained, target).mean()),
            "measured_exploitability": exploitability(matrix, trained),
            "target_exploitability": exploitability(matrix, target),
            "analogue_exploitability": exploitability(matrix, analogue[spec.step]),
            "kl_to_analogue": float(kl_per_prompt(trained, analogue[spec.step]).mean()),
            "start_exploitability": start, "method": "exact",
            "policy": policies[spec.step] if policies else "",
        })
    return rows


def unavailable_rows(steps: list[StepSpec], *, run: str = "", algorithm: str = "", policies=None,
                     reason: str = "unavailable") -> list[dict]:
    """Rows with nan numbers, for a run whose category distributions cannot be read exactly."""
    nan = float("nan")
    return [{"run": run, "algorithm": algorithm, "step": s.step, "round": s.round, "split": s.split,
             "loss": s.loss, "eta": s.eta, "eta_tau": s.eta_tau,
             **{c: nan for c in COLUMNS[8:16]}, "method": reason,
             "policy": policies[s.step] if policies else ""} for s in steps]


def run_summary(rows: list[dict]) -> dict:
    """One run's line of :data:`RUN_COLUMNS` from its per-step rows (in step order)."""
    if not rows:
        raise InputError("run_summary: a run with no steps")
    kls = np.array([float(r["kl_to_target"]) for r in rows])
    last = rows[-1]
    measured, analogue = float(last["measured_exploitability"]), float(last["analogue_exploitability"])
    return {
        "run": last["run"], "algorithm": last["algorithm"], "steps": len(rows),
        "median_kl_to_target": float(np.median(kls)), "max_kl_to_target": float(np.max(kls)),
        "median_tv_to_target": float(np.median([float(r["tv_to_target"]) for r in rows])),
        "start_exploitability": float(last["start_exploitability"]),
        "final_measured_exploitability": measured, "final_analogue_exploitability": analogue,
        "analogue_gap": measured - analogue,
        "final_target_exploitability": float(last["target_exploitability"]),
        "kl_per_step": ",".join(f"{k:.2g}" for k in kls),
    }


def format_tsv(rows: list[dict], columns) -> str:
    """Tab-separated text: a header, one line per row; floats with 6 significant digits."""
    def cell(value):
        if value is None:
            return ""
        if isinstance(value, float):
            return f"{value:.6g}"
        return str(value)

    return "\n".join(["\t".join(columns)] + ["\t".join(cell(row[c]) for c in columns) for row in rows]) + "\n"


def read_tsv(path) -> list[dict]:
    """A table written by :func:`format_tsv` (a run's per-step table), values as strings.

    Raises:
        InputError: the file is missing or lacks a column of :data:`COLUMNS`.
    """
    import csv
    from pathlib import Path

    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    reader = csv.DictReader(text.splitlines(), delimiter="\t")
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise InputError(f"{path}: not a prox-fidelity table (missing column {missing[0]})")
    return list(reader)
