"""Issue 13, item 2: every config hole found by the reliability attack is refused at plan time,
in one line naming the config key — validated directly (a table over all of them), and by a
real `snakemake -n` that exits non-zero before anything is written to results/."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import yaml
from workflow_utils import REPO, snakemake, tiny_config, workflow_with_config

from linepo.errors import InputError
from linepo.workflow.config import LR_SCHEDULERS, load_config, validate_config
from linepo.workflow.inputs import check_config_files, check_duplicate_keys, workflow_config_files
from linepo.workflow.preflight import SKIP_ENV, check_environment

BASE = yaml.safe_load((REPO / "config.yaml").read_text())
NAN, INF = float("nan"), float("inf")


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return str(path)


def set_in(path, value):
    """An edit that sets config[a][b]... = value, creating sections on the way."""
    def edit(config, tmp_path):
        *parents, last = path.split(".")
        section = config
        for name in parents:
            section = section.setdefault(name, {})
        section[last] = value(tmp_path) if callable(value) else value
    return edit


def prompts_file(config, tmp_path, num_splits, rows, **extra):
    config["prompts"] = {"source": write_jsonl(tmp_path / "prompts.jsonl", rows), "num_splits": num_splits,
                         "max_prompts": None, **extra}


FOUR_ROWS = [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"}, {"prompt": "  "}]  # two distinct prompts

#: (hole, edit(config, tmp_path), the message's start, a word of its reason)
HOLES = [
    ("unknown top-level key", set_in("trainng", {"epochs": 2}),
     "config key trainng: unknown key (did you mean training?)", "did you mean"),
    ("unknown nested key", set_in("training.epoch", 2), "config key training.epoch: unknown key", "epochs"),
    ("nan eta", set_in("runs.linepo.eta", NAN), "config key runs.linepo.eta: nan", "finite"),
    ("inf learning rate", set_in("training.learning_rate", INF), "config key training.learning_rate: inf", "finite"),
    ("-inf in an override", set_in("runs.linepo.round_overrides", {"2": {"eta": -INF}}),
     "config key runs.linepo.round_overrides.2.eta: -inf", "finite"),
    ("nan in a list", set_in("policy.embedded.style_mix", [NAN, 0.5, 0.5]),
     "config key policy.embedded.style_mix.0: nan", "finite"),
    ("greedy training sampler", set_in("sampling.temperature", 0),
     "config key sampling.temperature: 0 is greedy decoding", "no preference pairs"),
    ("unknown scheduler", set_in("training.lr_scheduler_type", "bogus"),
     "config key training.lr_scheduler_type: 'bogus' is not one of", "linear"),
    ("unknown scheduler of a run", set_in("runs.dpo.training", {"lr_scheduler_type": "bogus"}),
     "config key runs.dpo.training.lr_scheduler_type", "not one of"),
    ("scheduler needing kwargs", set_in("training.lr_scheduler_type", "cosine_with_min_lr"),
     "config key training.lr_scheduler_type: cosine_with_min_lr needs min_lr", "lr_scheduler_kwargs"),
    ("plateau scheduler without validation",
     set_in("runs.linepo.round_overrides", {"3": {"training": {"lr_scheduler_type": "reduce_lr_on_plateau"}}}),
     "config key runs.linepo.round_overrides.3.training.lr_scheduler_type", "validation.enabled"),
    ("more splits than embedded prompts", lambda c, t: c["prompts"].update(num_splits=501, max_prompts=None),
     "config key prompts.num_splits: 501 splits of the 500 prompts of embedded", "every split"),
    ("more splits than max_prompts", lambda c, t: c["prompts"].update(num_splits=2, max_prompts=1),
     "config key prompts.max_prompts: 1 prompt(s) cannot fill prompts.num_splits (2)", "every split"),
    ("more splits than max_prompts of a hub dataset",
     set_in("prompts", {"source": "HuggingFaceH4/ultrafeedback_binarized", "max_prompts": 1, "num_splits": 2}),
     "config key prompts.max_prompts: 1 prompt(s)", "every split"),
    ("more splits than a local file's distinct prompts", lambda c, t: prompts_file(c, t, 3, FOUR_ROWS),
     "config key prompts.num_splits: 3 splits of the 2 prompts of", "at most 2"),
    ("more splits than the prompts within max_prompt_chars",
     lambda c, t: prompts_file(c, t, 2, [{"prompt": "short"}, {"prompt": "x" * 30}], max_prompt_chars=10),
     "config key prompts.num_splits: 2 splits of the 1 prompts of", "at most 1"),
    ("every prompt longer than max_prompt_chars",
     lambda c, t: prompts_file(c, t, 1, [{"prompt": "x" * 30}], max_prompt_chars=10),
     "config key prompts.max_prompt_chars: all 1 prompts of", "longer than 10 characters"),
    ("an unknown embedded split", set_in("prompts.split", "test"), "config key prompts.split: 'test'", "train"),
    ("a missing prompts file", set_in("prompts.source", lambda t: str(t / "absent.jsonl")),
     "config key prompts.source: ", "file not found"),
    ("a missing eval prompts file", set_in("eval_prompts.source", "data/absent.json"),
     "config key eval_prompts.source: data/absent.json: file not found", "not found"),
    ("a missing validation prompts file",
     set_in("validation", {"enabled": True, "prompts": {"source": "./absent.parquet"}}),
     "config key validation.prompts.source: ./absent.parquet: file not found", "not found"),
    ("a prompts file of another type", set_in("prompts.source", lambda t: str(t) + "/"),
     "config key prompts.source: ", "not a .jsonl, .json or .parquet file"),
    ("a prompt column the file lacks", lambda c, t: prompts_file(c, t, 2, FOUR_ROWS, prompt_column="text"),
     "config key prompts.prompt_column: 'text': no such column", "columns: prompt"),
    ("a file without a prompt column", lambda c, t: prompts_file(c, t, 1, [{"text": "a"}]),
     "config key prompts.source: ", "prompt_column"),
    ("a file of empty prompts", lambda c, t: prompts_file(c, t, 1, [{"prompt": " "}]),
     "config key prompts.source: ", "no prompts"),
    ("style mix of zeros", set_in("policy.embedded.style_mix", [0, 0, 0]),
     "config key policy.embedded.style_mix: must be 3 non-negative numbers summing to 1", "[0, 0, 0]"),
    ("run names differing in case", lambda c, t: c["runs"].update(INPO=copy.deepcopy(c["runs"]["inpo"])),
     "config key runs.INPO: differs from runs.inpo only in case", "case-insensitive"),
    ("a checkpoint named like SFT", set_in("evaluation.checkpoints", {"SFT": {"run": "inpo", "round": 1}}),
     "config key evaluation.checkpoints.SFT: differs from the SFT checkpoint sft only in case", "rename"),
    ("settings differing in case",
     set_in("synthetic.settings", {"a": {"algorithms": ["md"]}, "A": {"algorithms": ["md"]}}),
     "config key synthetic.settings.A: differs from synthetic.settings.a", "case"),
]


@pytest.mark.parametrize("hole, edit, start, reason", HOLES, ids=[h[0] for h in HOLES])
def test_every_config_hole_is_refused_naming_the_key(tmp_path, hole, edit, start, reason):
    config = copy.deepcopy(BASE)
    edit(config, tmp_path)
    with pytest.raises(InputError) as info:
        validate_config(config)
    message = str(info.value)
    assert message.startswith(start), message
    assert reason in message and "\n" not in message


def test_what_still_works_passes(tmp_path):
    """Only what cannot work is refused: greedy eval decoding, schedulers stepped on the
    validation loss with validation on, a file with enough prompts, case-distinct names."""
    config = copy.deepcopy(BASE)
    config["evaluation"]["decoding"]["temperature"] = 0
    config["validation"] = {"enabled": True, "prompts": {"source": "embedded", "split": "eval"}}
    config["training"]["lr_scheduler_type"] = "reduce_lr_on_plateau"
    prompts_file(config, tmp_path, 2, FOUR_ROWS)
    config["runs"]["inpo_2"] = copy.deepcopy(config["runs"]["inpo"])
    validated = validate_config(config)
    assert validated["evaluation"]["decoding"]["temperature"] == 0
    config["prompts"]["split"] = "train[:1]"  # a slice: left to linepo prompts
    validate_config(config)
    for path in (REPO / "config.yaml", REPO / "configs/paper.yaml"):
        load_config(str(path))


def test_the_scheduler_names_are_transformers_ones():
    from transformers.trainer_utils import SchedulerType

    assert set(LR_SCHEDULERS) <= {t.value for t in SchedulerType}


@pytest.mark.parametrize("key", ["policy.sft", "policy.build.base"])
def test_an_uncached_hub_policy_offline_names_the_key(tmp_path, monkeypatch, key):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv(SKIP_ENV, raising=False)  # tests/conftest.py sets it
    policy = {"sft": "acme/sft-1b"} if key == "policy.sft" else {"sft": "build", "build": {"base": "acme/base-1b"}}
    config = validate_config({**copy.deepcopy(BASE), "policy": policy})
    with pytest.raises(InputError) as info:
        check_environment(config)
    assert str(info.value).startswith(f"config key {key}: acme/") and "not in the Hugging Face cache" in str(info.value)


# ----------------------------------------------------------------------------- duplicate YAML keys


def test_a_duplicated_yaml_key_is_refused_with_its_section_and_line(tmp_path):
    text = "runs:\n  linepo:\n    algorithm: linepo\n    eta: 4.0\n    eta: 8.0\n"
    with pytest.raises(InputError) as info:
        check_duplicate_keys(text, "config.yaml")
    assert str(info.value).startswith("config.yaml: duplicate key eta in runs.linepo (line 5; first on line 4)")
    with pytest.raises(InputError, match=r"^c.yaml: duplicate key training in the top level \(line 2"):
        check_duplicate_keys("training: {}\ntraining: {epochs: 1}\n", "c.yaml")
    with pytest.raises(InputError, match=r"^c.yaml: duplicate key a in runs.x.round_overrides.3"):
        check_duplicate_keys('{"runs": {"x": {"round_overrides": {"3": {"a": 1, "a": 2}}}}}', "c.yaml")
    check_duplicate_keys("a: &x {b: 1}\nc: *x\nd: {<<: *x, e: 2}\nl: [{b: 1}, {b: 2}]\n1: x\n'1': y\n", "ok.yaml")
    path = tmp_path / "config.yaml"
    path.write_text((REPO / "config.yaml").read_text() + "training: {epochs: 2}\n")
    with pytest.raises(InputError, match="duplicate key training in the top level"):
        load_config(str(path))  # linepo plan
    with pytest.raises(InputError, match="duplicate key training"):
        check_config_files([str(tmp_path / "absent.yaml"), str(path)])


def test_the_config_files_snakemake_read():
    workflow = SimpleNamespace(configfiles=["/w/extra.yaml", "config.yaml"], overwrite_configfiles=["/w/extra.yaml"],
                               config_settings=SimpleNamespace(replace_workflow_config=False))
    assert workflow_config_files(workflow) == ["/w/extra.yaml", "config.yaml"]
    workflow.config_settings.replace_workflow_config = True  # the Snakefile's config.yaml is dropped
    assert workflow_config_files(workflow) == ["/w/extra.yaml"]


# ----------------------------------------------------------------------------- snakemake -n


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    directory = workflow_with_config(tmp_path_factory.mktemp("holes"), tiny_config())
    (directory / "typo.yaml").write_text(yaml.safe_dump(tiny_config(trainng={"epochs": 2})))
    (directory / "twice.yaml").write_text((directory / "config.yaml").read_text() + "training: {epochs: 2}\n")
    return directory


@pytest.mark.parametrize("configfile, line", [
    ("typo.yaml", "linepo: config key trainng: unknown key (did you mean training?)"),
    ("twice.yaml", "linepo: twice.yaml: duplicate key training in the top level"),
])
def test_snakemake_plans_nothing_and_says_one_line(workdir, configfile, line):
    result = snakemake(workdir, "-n", "--configfile", configfile, "--replace-workflow-config", timeout=300)
    assert result.returncode != 0
    ours = [text for text in result.stderr.splitlines() if text.startswith("linepo:")]
    assert len(ours) == 1 and line in ours[0].replace(str(workdir) + "/", ""), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert not (workdir / "results").exists()
