"""The planner: content-addressed steps, shared prefixes, and what a config change touches."""

import copy


from linepo.workflow.config import validate_config
from linepo.workflow.plan import build_plan
from workflow_utils import REPO, default_realisation

BASE = default_realisation()  # one realisation: these tests count its nodes


def plan_of(edit=None):
    config = copy.deepcopy(BASE)
    if edit:
        edit(config)
    return build_plan(validate_config(config))


def ids(plan, kind):
    return set(getattr(plan, kind))


def step_ids(plan, run):
    return [step.policy for step in plan.runs[run]]


def test_every_run_starts_from_sft_and_has_rounds_times_splits_steps():
    plan = plan_of()
    for name, run in BASE["runs"].items():
        steps = plan.runs[name]
        expected = 1 if run["algorithm"] in ("dpo", "ipo") else run["rounds"] * BASE["prompts"]["num_splits"]
        assert len(steps) == expected
        assert plan.policies[steps[0].policy].parent == plan.sft


def test_linepo_shares_inpo_rounds_before_its_first_reference_move():
    plan = plan_of(lambda c: c["runs"].update(
        inpo={"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 3},
        linepo={"algorithm": "linepo", "eta": 4.0, "eta_tau": 0.6, "rounds": 3, "reference_moves": [3]},
    ))
    splits = BASE["prompts"]["num_splits"]
    inpo, linepo = step_ids(plan, "inpo"), step_ids(plan, "linepo")
    assert inpo[: 2 * splits] == linepo[: 2 * splits]  # rounds 1–2: the paper's shared prefix
    assert not set(inpo[2 * splits:]) & set(linepo[2 * splits:])
    moved = [s for s in plan.runs["linepo"] if s.reference_moved]
    assert [(s.round, s.split) for s in moved] == [(3, "0")]
    assert moved[0].reference == inpo[2 * splits - 1]  # π_ref ← the policy after round 2


def test_iterative_ipo_uses_the_current_policy_as_reference():
    plan = plan_of()
    for step, previous in zip(plan.runs["iter_ipo"][1:], plan.runs["iter_ipo"]):
        assert step.reference == previous.policy


def test_one_pass_runs_share_their_data_and_scores():
    plan = plan_of()
    dpo = plan.policies[plan.final_policy("dpo")]
    ipo = plan.policies[plan.final_policy("ipo")]
    assert dpo.scored == ipo.scored and dpo.id != ipo.id
    assert len(plan.scored[dpo.scored[0]].prefs) == BASE["prompts"]["num_splits"]


def test_a_round_2_change_touches_round_2_onwards_only_and_reverting_restores_ids():
    before = plan_of()
    after = plan_of(lambda c: c["runs"]["inpo"].update(round_overrides={"2": {"eta": 5.0}}))
    old, new = plan_of().runs["inpo"], after.runs["inpo"]
    for a, b in zip(old, new):
        assert (a.policy == b.policy) == (a.round < 2)
    assert step_ids(plan_of(), "inpo") == step_ids(before, "inpo")  # reverting: the same ids again


def test_an_eval_only_change_touches_no_training_node():
    before = plan_of()
    after = plan_of(lambda c: c["eval_prompts"].update(max_prompts=50))
    for kind in ("policies", "samples", "prefs", "scored"):
        assert ids(before, kind) == ids(after, kind)
    assert before.eval_prompts != after.eval_prompts


def test_a_judge_change_keeps_samples_and_reruns_the_rest():
    before = plan_of()
    matrix = [[0.5, 0.2, 0.8], [0.8, 0.5, 0.2], [0.2, 0.8, 0.5]]
    after = plan_of(lambda c: c["judge"].update(matrix=matrix))
    first_samples = {s for s in before.samples if before.samples[s].policy == before.sft}
    assert first_samples <= ids(after, "samples")
    assert not ids(before, "prefs") & ids(after, "prefs")


def test_a_large_paper_sized_plan_is_cheap():
    def edit(config):
        config["prompts"]["num_splits"] = 6
        config["runs"] = {
            "dpo": {"algorithm": "dpo", "eta": 500.0}, "ipo": {"algorithm": "ipo", "eta": 500.0},
            "iter_ipo": {"algorithm": "iter_ipo", "eta": 500.0, "rounds": 3},
            "sppo": {"algorithm": "sppo", "eta": 500.0, "rounds": 3},
            "inpo": {"algorithm": "inpo", "eta": 500.0, "eta_tau": 1 / 3, "rounds": 3},
            "linepo": {"algorithm": "linepo", "eta": 500.0, "eta_tau": 1 / 3, "rounds": 3, "reference_moves": [3]},
        }

    plan = plan_of(edit)
    # 18 steps each for iter_ipo, sppo, inpo; LINE-PO adds only its 6 round-3 steps.
    assert plan.counts()["policies"] == 2 + 18 * 3 + 6


def test_the_paper_config_plans_without_downloading(tmp_path):
    """configs/paper.yaml: 6 splits × 3 rounds; LINE-PO shares INPO's first two rounds."""
    from linepo.workflow.config import load_config
    from workflow_utils import copy_workflow, planned_jobs, snakemake

    plan = build_plan(load_config(str(REPO / "configs/paper.yaml")))
    assert plan.counts()["policies"] == 2 + 18 + 18 + 6
    inpo, linepo = step_ids(plan, "inpo"), step_ids(plan, "linepo")
    assert inpo[:12] == linepo[:12] and not set(inpo[12:]) & set(linepo[12:])
    workdir = copy_workflow(tmp_path)
    result = snakemake(workdir, "-n", "--configfile", "configs/paper.yaml", "--replace-workflow-config")
    assert result.returncode == 0, result.stderr[-2000:]
    jobs = planned_jobs(result.stdout)
    rules = [rule for rule, _ in jobs]
    # 45 training samples, plus held-out (validation) samples of each of the 40 distinct
    # policies being updated (SFT, 17 more each for iter_ipo and inpo, LINE-PO's last 5).
    held_out = [w for rule, w in jobs if rule == "sample" and w["split"] == "val"]
    assert rules.count("train") == 44 and rules.count("sample") == 45 + 40 and len(held_out) == 40
    assert rules.count("sft_import") == 1 and rules.count("validation_prompts") == 1
    assert "synthetic_trajectory" not in rules
    assert not {"prox_fidelity", "prox_fidelity_table", "exploitability"} & set(rules)  # a model judge: none


def test_round_overrides_apply_to_one_round_or_from_a_round_on():
    from linepo.workflow.plan import round_override

    run = {"round_overrides": {"2+": {"eta": 100.0, "training": {"epochs": 2}}, "3": {"training": {"epochs": 5}},
                               "4+": {"eta_tau": 0.5}}}
    assert round_override(run, 1) == {}
    assert round_override(run, 2) == {"eta": 100.0, "training": {"epochs": 2}}
    assert round_override(run, 3) == {"eta": 100.0, "training": {"epochs": 5}}  # its own entry wins
    assert round_override(run, 5) == {"eta": 100.0, "eta_tau": 0.5, "training": {"epochs": 2}}
    plan = plan_of(lambda c: c["runs"]["linepo"].update(round_overrides={"2+": {"eta": 8.0}}))
    etas = {(s.round, plan.policies[s.policy].train["eta"]) for s in plan.runs["linepo"]}
    assert etas == {(1, 4.0), (2, 8.0), (3, 8.0)}


def test_an_imported_sft_policy_is_a_local_folder_for_every_job():
    plan = plan_of(lambda c: c["policy"].update(sft="Qwen/Qwen2-1.5B", tokenizer="Qwen/Qwen2-1.5B"))
    assert plan.policy_dir(plan.sft) == f"results/sft/{plan.sft}/model" == plan.policy_inputs(plan.sft)[0]
    other = plan_of(lambda c: c["policy"].update(sft="Qwen/Qwen2-1.5B"))
    assert other.sft != plan.sft  # the tokenizer is part of the SFT node's recipe


def test_validation_adds_held_out_nodes_per_step_and_new_train_ids():
    off = plan_of()
    on = plan_of(lambda c: c.update(validation={"enabled": True, "prompts": {"source": "embedded", "split": "eval"}}))
    from_sft = {sid for sid, node in off.samples.items() if node.policy == off.sft}
    assert from_sft < set(on.samples)  # the SFT policy's training samples are the same nodes
    held_out = [n for n in on.samples.values() if n.split == "val"]
    trained = [n for n in on.policies.values() if not n.is_sft]
    assert len(held_out) == len({n.parent for n in trained})  # one per policy being updated
    for node in trained:
        (scored,) = node.validation
        assert on.scored[scored].reference == node.reference and on.scored[scored].anchor == node.parent
        assert on.train_settings(node.id)["eval_steps"] == 500 and on.train_settings(node.id)["select_best"]
    assert not set(off.policies) - {off.sft} & set(on.policies)
