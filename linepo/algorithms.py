"""The algorithm registry: one record per preference-optimisation algorithm.

Everything that needs to know an algorithm reads it here: the workflow plan (its loss, how
its reference moves, one pass or iterative), the config check and the config schema's enum
(which run parameters it takes), the evaluation (its label and the paper's Table 2 order),
and the tabular games (its sample-based and exact-gradient twins, ``linepo game``).

    python -c "from linepo.algorithms import ALGORITHMS; print(ALGORITHMS['linepo'])"

Reference rules: ``fixed`` — π_ref is the start policy (the SFT policy in the workflow);
``current`` — π_ref is the policy being updated (mirror descent: iterative IPO, SPPO);
``moving`` — π_ref moves to the current policy at chosen rounds (LINE-PO, paper Algorithm 1).

Movable references (``Algorithm.movable``): a run of a ``fixed``-reference iterative solver
may also name ``reference_moves`` (then π_ref := the current policy at the start of those
rounds, LINE-PO's move): INPO + moves *is* LINE-PO's computation, node for node (online IPO
with KL whose reference moves is also Nash-Prox's structure, arXiv 2505.19731); MNPO and EGPO
+ moves wrap the same outer loop around their own inner steps. LINE-PO moves every round
unless told otherwise; the others never unless told. ``current``-reference solvers (their
reference already is the current policy or prox centre) and one-pass runs have nothing to move.

Schedules (:mod:`linepo.workflow.schedules`, where each is written out): ``single`` — one fit
per step, sampling from the current policy; ``extragradient`` — Mirror-Prox (Appendix H), a
half step π^{t+½} = Prox(π^t, η P(·≻π^t)) then π^{t+1} = Prox(π^t, η P(·≻π^{t+½})), each a fresh
sampling and an IPO fit against π^t (EGPO: the same with INPO-type fits against the fixed
reference, centred at π^t); ``optimistic`` — OMWU (Appendix H), the same but the half
step re-scores the previous step's pairs (from π^{t−½}) instead of sampling again (π^{−½} := π^0).
Their runs' iterates are the full steps π^{t+1}. The exact twin ``omwu``
(:func:`linepo.games.game.optimistic_mwu`) iterates the single-sequence form, whose iterates are
this two-sequence form's half steps; ``mirror_prox``'s iterates are its full steps.
``mixture`` — MNPO: a ``single`` step whose INPO anchor is a weighted mixture of past iterates
(run parameters ``window``, ``weights``); ``omd`` — ONPO, two IPO fits per step on the same
pairs from π^t, π′_{t+1} against π′_t, then π_{t+1} against π′_{t+1}.

Exact twins take the runs' parameters as τ = ητ/η (``linepo game --tau``); the plan's DAG with
exact steps is the twin's trajectory (tests/test_llm_schedules.py, tests/test_llm_peers.py).
"""

from __future__ import annotations

from dataclasses import dataclass

REFERENCE_RULES = ("fixed", "current", "moving")
SCHEDULES = ("single", "extragradient", "optimistic", "mixture", "omd")  # linepo.workflow.schedules


@dataclass(frozen=True)
class Algorithm:
    name: str  #: the ``algorithm:`` value of a run
    label: str  #: how tables and figures name it
    loss: str  #: its loss in linepo.losses
    reference: str  #: fixed | current | moving (see the module doc)
    one_pass: bool  #: one training step over all prompt splits (the paper's DPO and IPO baselines)
    params: tuple = ()  #: run parameters it needs beyond eta
    sampled: str | None = None  #: its sample-based tabular twin (linepo game --algorithm)
    exact: str | None = None  #: its exact-gradient tabular twin
    doc: str = ""
    schedule: str = "single"  #: one of SCHEDULES (see the module doc); iterative only
    movable: bool = False  #: its fixed reference may move at named rounds (``reference_moves``)
    #: its steps.tsv and Prox-fidelity spec name each step's sampler and anchor (the methods
    #: added with MNPO; the older runs' files stay as they were, so nothing of theirs reruns)
    names_anchors: bool = False

    @property
    def iterative(self) -> bool:
        return not self.one_pass


#: In the paper's Table 2 order (rows and columns of the win-rate matrix).
REGISTRY = (
    Algorithm("dpo", "DPO", "dpo", "fixed", True, doc="DPO, one pass over all prompts against the SFT policy"),
    Algorithm("ipo", "IPO", "ipo", "fixed", True, doc="IPO, one pass over all prompts against the SFT policy"),
    Algorithm("iter_dpo", "Iter-DPO", "dpo", "current", False, sampled="iter_dpo",
              doc="iterative DPO: each step against the policy being updated (Figure 2)"),
    Algorithm("iter_ipo", "Iter-IPO", "ipo", "current", False, sampled="iter_ipo", exact="md",
              doc="iterative IPO: mirror descent up to sampling error, cycles"),
    Algorithm("sppo", "SPPO", "sppo", "current", False, sampled="sppo", exact="md",
              doc="SPPO: mirror descent with a fixed log-partition η/2"),
    Algorithm("inpo", "INPO", "inpo", "fixed", False, params=("eta_tau",), sampled="inpo_sampled", exact="inpo",
              movable=True, doc="INPO (Algorithm 4): converges to the KL-regularised game's equilibrium"),
    Algorithm("linepo", "LINE-PO", "inpo", "moving", False, params=("eta_tau",), sampled="linepo_sampled",
              exact="linepo", movable=True,
              doc="LINE-PO (Algorithm 3): INPO whose reference moves; converges to the Nash policy"),
    Algorithm("mirror_prox", "Mirror-Prox", "ipo", "current", False, exact="mirror_prox", schedule="extragradient",
              sampled="mirror_prox_sampled",
              doc="Mirror-Prox (Appendix H): an IPO extrapolation step from π^t, then the IPO update from π^t "
                  "on pairs of the extrapolated policy"),
    Algorithm("omwu", "OMWU", "ipo", "current", False, exact="omwu", schedule="optimistic", sampled="omwu_sampled",
              doc="optimistic MWU (Appendix H): Mirror-Prox whose half step reuses the previous step's pairs"),
    Algorithm("mnpo", "MNPO", "inpo", "fixed", False, params=("eta_tau", "window", "weights"), exact="mnpo",
              schedule="mixture", movable=True, sampled="mnpo_sampled", names_anchors=True,
              doc="MNPO (arXiv 2509.23102): INPO whose anchor is a weighted mixture of the last `window` iterates"),
    Algorithm("onpo", "ONPO", "ipo", "current", False, exact="onpo", schedule="omd", sampled="onpo_sampled",
              names_anchors=True,
              doc="ONPO (arXiv 2502.16852): optimistic OMD, two IPO fits per step on pairs of π_t"),
    Algorithm("egpo", "EGPO", "inpo", "fixed", False, params=("eta_tau",), exact="egpo", schedule="extragradient",
              movable=True, sampled="egpo_sampled", names_anchors=True,
              doc="EGPO (COLM 2025): extragradient on the KL-regularised game, INPO-type fits"),
)

ALGORITHMS: dict[str, Algorithm] = {a.name: a for a in REGISTRY}
TABLE_ORDER = tuple(a.name for a in REGISTRY)
#: The losses the algorithms train with (linepo.losses implements each; tests/test_algorithms.py).
LOSS_NAMES = tuple(dict.fromkeys(a.loss for a in REGISTRY))


def sampled_dynamics() -> dict[str, tuple[str, str]]:
    """The one-fit-per-step sample-based tabular algorithms (:mod:`linepo.games.sampled`):
    ``{name: (loss, reference rule)}``."""
    return {a.sampled: (a.loss, a.reference) for a in REGISTRY if a.sampled and a.schedule == "single"}


def sampled_schedules() -> dict[str, tuple[Algorithm, bool]]:
    """The other schedules' sample-based twins (:mod:`linepo.games.sampled_peers`):
    ``{name: (algorithm, reference moves)}`` — each algorithm's ``sampled`` twin, and for a
    movable one a ``<name>_moves_sampled`` twin whose reference moves every ``inner_steps``
    (INPO's is ``linepo_sampled``)."""
    twins = {}
    for a in REGISTRY:
        if a.sampled and a.schedule != "single":
            twins[a.sampled] = (a, False)
            if a.movable:
                twins[f"{a.name}_moves_sampled"] = (a, True)
    return twins
