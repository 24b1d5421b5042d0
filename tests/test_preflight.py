"""Plan-time checks of what the jobs will load (issue 12, item 7): a judge folder that lacks its
weights, tokenizer or chat template, a hub id missing from the cache while offline, backend
vllm without vllm, a hub dataset ``name`` on a local prompt file — each one line naming the
config key, from validation and from `snakemake -n`, before any job runs or anything is written."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess

import pytest
import yaml
from workflow_utils import REPO, tiny_config, workflow_with_config

from linepo.errors import InputError
from linepo.workflow.config import validate_config
from linepo.workflow.preflight import SKIP_ENV, check_environment, folder_problem

BASE = yaml.safe_load((REPO / "config.yaml").read_text())
SHA = "0123456789abcdef0123456789abcdef01234567"


def fake_model(folder, *, weights=True, tokenizer=True, template=True):
    """A folder with the files a model judge is loaded from (empty stand-ins: nothing loads them here)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
    if tokenizer:
        (folder / "tokenizer.json").write_text("{}")
        (folder / "tokenizer_config.json").write_text("{}")
    if template:
        (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    return folder


def fake_cache(cache, repo_id, **files):
    """``repo_id``'s main snapshot in a Hugging Face cache folder laid out as huggingface_hub does."""
    root = cache / f"models--{repo_id.replace('/', '--')}"
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(SHA)
    return fake_model(root / "snapshots" / SHA, **files)


def config_with(**sections):
    config = copy.deepcopy(BASE)
    for key, value in sections.items():
        config[key] = value
    return config


def one_line_error(config) -> str:
    with pytest.raises(InputError) as info:
        validate_config(config)
    message = str(info.value)
    assert "\n" not in message
    return message


def env_error(config) -> str:
    with pytest.raises(InputError) as info:
        check_environment(validate_config(config))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """Offline, with an empty Hugging Face cache of this test's own; environment checks on."""
    import huggingface_hub.constants

    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv(SKIP_ENV, raising=False)
    return cache


# ----------------------------------------------------------------------------- (1) judge folders


def test_a_missing_judge_folder_names_the_key(tmp_path):
    message = one_line_error(config_with(judge={"type": "pairwise_lm", "model": str(tmp_path / "no-judge")}))
    assert message == f"config key judge.model: {tmp_path / 'no-judge'}: judge model folder not found"


@pytest.mark.parametrize("missing, reason", [
    ({"weights": False}, "no weights (model.safetensors, or model.safetensors.index.json and its shards)"),
    ({"tokenizer": False}, "no tokenizer files (tokenizer.json, tokenizer.model or vocab.json)"),
    ({"template": False}, "no chat template (chat_template.jinja, or chat_template in tokenizer_config.json); "
                          "set judge.use_chat_template: false to judge in plain text"),
])
def test_a_judge_folder_without_what_loading_needs_names_the_key(tmp_path, missing, reason):
    judge = fake_model(tmp_path / "judge", **missing)
    message = one_line_error(config_with(judge={"type": "pairwise_lm", "model": str(judge)}))
    assert message == f"config key judge.model: {judge}: {reason}"


def test_a_complete_judge_folder_passes_and_plain_text_needs_no_template(tmp_path):
    validate_config(config_with(judge={"type": "reward_model", "model": str(fake_model(tmp_path / "rm"))}))
    plain = fake_model(tmp_path / "plain", template=False)
    validate_config(config_with(judge={"type": "pairwise_lm", "model": str(plain), "use_chat_template": False}))
    (plain / "tokenizer_config.json").write_text('{"chat_template": "{{ messages }}"}')  # the older place
    validate_config(config_with(judge={"type": "pairwise_lm", "model": str(plain)}))


def test_a_really_saved_judge_passes(tmp_path):
    pytest.importorskip("torch")
    from helpers import build_tiny_judge

    for classifier in (False, True):
        judge = build_tiny_judge(tmp_path / f"judge-{classifier}", classifier=classifier, hidden=16, layers=1)
        assert folder_problem(judge, chat_template=True) is None


def test_a_sharded_judge_needs_every_shard(tmp_path):
    judge = fake_model(tmp_path / "judge", weights=False)
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (judge / "model.safetensors.index.json").write_text(json.dumps(index))
    (judge / "model-00001-of-00002.safetensors").write_bytes(b"")
    message = one_line_error(config_with(judge={"type": "pairwise_lm", "model": str(judge)}))
    assert message.endswith("no model-00002-of-00002.safetensors (a shard named in model.safetensors.index.json)")
    (judge / "model-00002-of-00002.safetensors").write_bytes(b"")
    validate_config(config_with(judge={"type": "pairwise_lm", "model": str(judge)}))


def test_the_evaluation_judge_is_checked_under_its_own_key(tmp_path):
    judge = fake_model(tmp_path / "judge", template=False)
    config = config_with(evaluation={**BASE["evaluation"], "judge": {"type": "pairwise_lm", "model": str(judge)}})
    assert one_line_error(config).startswith(f"config key evaluation.judge.model: {judge}: no chat template")
    message = one_line_error(config_with(judge={"type": "pairwise_lm"}))
    assert message.startswith("config key judge.model: required for a pairwise_lm judge")


def test_a_policy_folder_without_weights_or_tokenizer_names_the_key(tmp_path):
    policy = fake_model(tmp_path / "policy", weights=False)
    assert one_line_error(config_with(policy={"sft": str(policy)})).startswith(f"config key policy.sft: {policy}: no weights")
    weights_only = fake_model(tmp_path / "weights-only", tokenizer=False, template=False)
    message = one_line_error(config_with(policy={"sft": str(weights_only)}))
    assert message.endswith("no tokenizer files (tokenizer.json, tokenizer.model or vocab.json); name one with policy.tokenizer")
    tokenizer = fake_model(tmp_path / "tokenizer")
    validate_config(config_with(policy={"sft": str(weights_only), "tokenizer": str(tokenizer)}))


# ----------------------------------------------------------------------------- (2) offline hub ids


def llm_config(**sections):
    """The default with a model judge and hub models (runs use the judge)."""
    return config_with(**{"judge": {"type": "pairwise_lm", "model": "acme/judge-8b"}, **sections})


def test_an_uncached_hub_judge_offline_names_the_key(hub):
    message = env_error(llm_config())
    assert message == ("config key judge.model: acme/judge-8b: not in the Hugging Face cache, and HF_HUB_OFFLINE=1 is "
                       f"set: download it first (hf download acme/judge-8b), or plan for another machine with {SKIP_ENV}=1")


def test_transformers_offline_counts_too(hub, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert "TRANSFORMERS_OFFLINE=1 is set" in env_error(llm_config())


def test_uncached_policy_and_tokenizer_hub_ids_name_their_keys(hub):
    fake_cache(hub, "acme/judge-8b")
    assert env_error(llm_config(policy={"sft": "acme/sft-1b"})).startswith(
        "config key policy.sft: acme/sft-1b: not in the Hugging Face cache")
    fake_cache(hub, "acme/sft-1b", tokenizer=False, template=False)
    assert "has no tokenizer files" in env_error(llm_config(policy={"sft": "acme/sft-1b"}))
    assert env_error(llm_config(policy={"sft": "acme/sft-1b", "tokenizer": "acme/base-1b"})).startswith(
        "config key policy.tokenizer: acme/base-1b: not in the Hugging Face cache")
    fake_cache(hub, "acme/base-1b")
    check_environment(validate_config(llm_config(policy={"sft": "acme/sft-1b", "tokenizer": "acme/base-1b"})))


def test_a_cached_judge_needs_its_files_and_an_eval_judge_is_checked_too(hub):
    fake_cache(hub, "acme/judge-8b", template=False)
    assert "its copy in the Hugging Face cache has no chat template" in env_error(llm_config())
    fake_cache(hub, "acme/judge-9b")
    check_environment(validate_config(llm_config(judge={"type": "pairwise_lm", "model": "acme/judge-9b"})))
    evaluation = {**BASE["evaluation"], "judge": {"type": "reward_model", "model": "acme/rm"}}
    assert env_error(llm_config(judge={"type": "pairwise_lm", "model": "acme/judge-9b"}, evaluation=evaluation)).startswith(
        "config key evaluation.judge.model: acme/rm: not in the Hugging Face cache")


def test_online_or_skipped_nothing_is_asked(hub, monkeypatch):
    monkeypatch.setenv(SKIP_ENV, "1")
    check_environment(validate_config(llm_config()))
    monkeypatch.delenv(SKIP_ENV)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    check_environment(validate_config(llm_config()))  # online: the job downloads it


# ----------------------------------------------------------------------------- (3) vllm


@pytest.fixture
def no_vllm(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "vllm" else real(name, *a))
    monkeypatch.delenv(SKIP_ENV, raising=False)


def test_backend_vllm_without_vllm_names_the_key(no_vllm):
    message = env_error(config_with(sampling={**BASE["sampling"], "backend": "vllm"}))
    assert message == ("config key sampling.backend: vllm is not installed here (pip install 'linepo[vllm]'), "
                       f"or plan for another machine with {SKIP_ENV}=1")
    evaluation = {**BASE["evaluation"], "decoding": {**BASE["evaluation"]["decoding"], "backend": "vllm"}}
    assert env_error(config_with(evaluation=evaluation)).startswith("config key evaluation.decoding.backend: vllm is not")
    no_runs = config_with(sampling={**BASE["sampling"], "backend": "vllm"}, runs={},
                          evaluation={**BASE["evaluation"], "checkpoints": {}})
    check_environment(validate_config(no_runs))  # nothing samples


# ----------------------------------------------------------------------------- (4) eval prompt names


def test_a_hub_name_on_a_local_eval_file_names_the_key(tmp_path):
    eval_set = tmp_path / "eval_set.json"
    eval_set.write_text('[{"instruction": "Hi"}]')
    message = one_line_error(config_with(eval_prompts={"source": str(eval_set), "name": "alpaca_eval", "split": "eval"}))
    assert message == (f"config key eval_prompts.name: 'alpaca_eval' is a hub dataset's configuration, but "
                       f"eval_prompts.source {eval_set} is a local file, which has none: remove eval_prompts.name")
    validation = {"enabled": True, "prompts": {"source": "held_out.jsonl", "name": "default"}}
    assert one_line_error(config_with(validation=validation)).startswith("config key validation.prompts.name: 'default'")
    validate_config(config_with(eval_prompts={"source": str(eval_set), "split": "eval"}))
    validate_config(config_with(eval_prompts={"source": "tatsu-lab/alpaca_eval", "name": "alpaca_eval"}))


# ----------------------------------------------------------------------------- snakemake -n


def plan_in(directory, config, **env):
    workflow_with_config(directory, config)
    environment = {k: v for k, v in os.environ.items() if k != SKIP_ENV}
    environment.update(env)
    return subprocess.run(["snakemake", "-n"], cwd=directory, capture_output=True, text=True, timeout=600,
                          env=environment)


RUNS = {"dpo": {"algorithm": "dpo", "eta": 4.0}}


def snakemake_cases(tmp_path):
    eval_set = tmp_path / "eval_set.json"
    eval_set.write_text('[{"instruction": "Hi"}]')
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    no_template = fake_model(tmp_path / "judge", template=False)
    return {
        "judge folder": (tiny_config(runs=RUNS, judge={"type": "pairwise_lm", "model": str(no_template)}), {},
                         f"linepo: config key judge.model: {no_template}: no chat template"),
        "offline hub id": (tiny_config(runs=RUNS, judge={"type": "reward_model", "model": "acme/rm-8b"}),
                           {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)},
                           "linepo: config key judge.model: acme/rm-8b: not in the Hugging Face cache"),
        "vllm": (tiny_config(runs=RUNS, sampling={"n": 3, "backend": "vllm"}), {},
                 "linepo: config key sampling.backend: vllm is not installed here"),
        "eval prompts name": (tiny_config(runs=RUNS, eval_prompts={"source": str(eval_set), "name": "alpaca_eval"}), {},
                              "linepo: config key eval_prompts.name: 'alpaca_eval' is a hub dataset's configuration"),
    }


@pytest.mark.parametrize("case", ["judge folder", "offline hub id", "vllm", "eval prompts name"])
def test_snakemake_dry_run_stops_with_one_line(tmp_path, case):
    if case == "vllm" and importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    config, env, expected = snakemake_cases(tmp_path)[case]
    result = plan_in(tmp_path / "work", config, **env)
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.startswith("linepo:")]
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr[-2000:]
    assert not (tmp_path / "work" / "results").exists()


def test_snakemake_dry_run_plans_a_complete_local_judge(tmp_path):
    judge = fake_model(tmp_path / "judge")
    result = plan_in(tmp_path / "work", tiny_config(runs=RUNS, judge={"type": "pairwise_lm", "model": str(judge)}))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "linepo:" not in result.stderr
