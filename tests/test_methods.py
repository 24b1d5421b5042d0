"""configs/methods.yaml (every method on the toy LLM) and its table (linepo.evaluation.methods)."""

from __future__ import annotations

import yaml

from linepo.algorithms import ALGORITHMS
from linepo.evaluation.methods import format_methods, main, methods_rows
from workflow_utils import REPO


def methods_config() -> dict:
    """config.yaml with configs/methods.yaml laid over it, as `--configfile` does (nested keys merged)."""
    base = yaml.safe_load((REPO / "config.yaml").read_text())
    overlay = yaml.safe_load((REPO / "configs" / "methods.yaml").read_text())
    merged = {**base, **{k: v for k, v in overlay.items() if k != "runs"}}
    merged["runs"] = {**base["runs"], **overlay["runs"]}
    return merged


def test_the_methods_config_runs_every_iterative_method_with_the_defaults_settings():
    from linepo.workflow.config import validate_config
    from linepo.workflow.plan import build_plan

    config = validate_config(methods_config())
    algorithms = {run["algorithm"] for run in config["runs"].values()}
    # every iterative algorithm with a published last-iterate claim, plus the default's runs
    assert {"mirror_prox", "omwu", "onpo", "mnpo", "egpo", "inpo", "linepo", "iter_ipo"} <= algorithms
    assert config["replicates"]["count"] >= 3
    for name, run in config["runs"].items():
        assert run["eta"] == 4.0, name  # one step size for every method: none tuned against another
        if "eta_tau" in run:
            assert run["eta_tau"] == 0.6, name
    moving = {name for name, run in config["runs"].items() if run.get("reference_moves")}
    assert {"mnpo_moves", "egpo_moves"} <= moving
    assert all(ALGORITHMS[config["runs"][name]["algorithm"]].movable for name in moving)

    # The default's runs are the same nodes with or without the added methods.
    default = build_plan(validate_config(yaml.safe_load((REPO / "config.yaml").read_text())))
    plan = build_plan(config)
    for replicate, runs in default.replicates.items():
        for run, steps in runs.items():
            assert [s.policy for s in plan.replicates[replicate][run]] == [s.policy for s in steps]


def write_summary(directory):
    (directory / "exploitability.tsv").write_text(
        "run\texploitability\texploitability_se\treplicates\tmethod\tcategory_distribution\tper_replicate\n"
        "sft\t0.1400\t0.0030\t2\texact\tbrief 0.2\t0:0.1430,1:0.1370\n"
        "linepo\t0.0200\t0.0060\t2\texact\tbrief 0.3\t0:0.0260,1:0.0140\n"
        "onpo\t0.0900\tnan\t1\texact\tbrief 0.3\t0:0.0900\n")
    (directory / "prox_fidelity_runs.tsv").write_text(
        "run\tfinal_analogue_exploitability\tfinal_analogue_exploitability_se\tanalogue_gap\tanalogue_gap_se\n"
        "linepo\t0.0005\t0.0001\t0.0196\t0.0060\n")
    (directory / "evaluation.tsv").write_text(
        "checkpoint\tmeta_nash\tmeta_nash_se\tpool_exploitability\tpool_exploitability_se\tnash_averaged\t"
        "nash_averaged_se\n"
        "sft\t0.0\t0.0\t0.139\t0.002\t-0.139\t0.002\n"
        "linepo\t0.6\t0.1\t0.010\t0.004\t-0.004\t0.002\n")


def test_the_table_shows_each_pooled_number_with_its_se_and_a_dash_where_a_table_has_no_row(tmp_path):
    write_summary(tmp_path)
    rows = methods_rows(tmp_path)
    assert [r["run"] for r in rows] == ["sft", "linepo", "onpo"]
    table = format_methods(rows).splitlines()
    assert table[3] == ("| `linepo` | 0.020 ± 0.006 (2) | 0.026, 0.014 | 0.0005 ± 0.0001 | 0.0196 ± 0.0060 "
                        "| 0.60 ± 0.10 | 0.010 ± 0.004 | -0.004 ± 0.002 |")
    # one replicate: no ± (its SE is nan); no Prox-fidelity or evaluation row: dashes
    assert table[4] == "| `onpo` | 0.090 (1) | 0.090 | — | — | — | — | — |"
    assert table[2].startswith("| `sft` | 0.140 ± 0.003 (2) | 0.143, 0.137 | — | — | 0.00 ± 0.00 |")


def test_a_missing_summary_file_is_one_line_and_exit_1(tmp_path, capsys):
    write_summary(tmp_path)
    (tmp_path / "evaluation.tsv").unlink()
    assert main([str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "evaluation.tsv: file not found" in err
