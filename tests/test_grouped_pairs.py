"""Grouped batches (``training.prompts_per_batch``) and deduplicated scoring (``scoring.deduplicate``):
each distinct response is forwarded once, and nothing else changes.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_grouped_pairs.py -q
"""

from __future__ import annotations

import copy
import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from helpers import build_tiny_policy, fast_settings, sha256, train_full_and_crashed  # noqa: E402
from workflow_utils import default_realisation  # noqa: E402

from linepo import toy as embedded  # noqa: E402
from linepo.cli import main  # noqa: E402
from linepo.errors import InputError  # noqa: E402
from linepo.schemas import read_table, write_table  # noqa: E402
from linepo.stages.models import load_policy  # noqa: E402
from linepo.stages.scoring import distinct_responses, score_preferences  # noqa: E402
from linepo.stages.training import PairCollator, PreferenceTraining, pair_features, pair_loss, read_scored, \
    train_policy  # noqa: E402
from linepo.stages.training.groups import GroupCollator, pair_batches, prompt_groups, unique_sequences  # noqa: E402
from linepo.stages.training.settings import TrainSettings  # noqa: E402
from linepo.workflow.config import validate_config  # noqa: E402
from linepo.workflow.plan import build_plan  # noqa: E402

NUM_PROMPTS = 5
#: 4 responses per prompt → 6 pairs per prompt, each response in 3 pairs
STYLES = ("brief", "plain", "detailed", "varied")


def all_pairs_rows(num_prompts: int = NUM_PROMPTS, seed: int = 0) -> list[dict]:
    """All pairs of 4 responses per prompt; one response of every other prompt was cut (no stop)."""
    rng = np.random.default_rng(seed)
    prompts = embedded.prompts("train", num_prompts)
    rows = []
    for i in range(num_prompts):
        texts = [embedded.response(i, s, rng) if s != "varied" else embedded.response(i, "detailed", rng, "varied")
                 for s in STYLES]
        finished = [True, True, True, i % 2 == 0]
        win = [0.2, 0.4, 0.6, 0.8]
        for a, b in itertools.combinations(range(len(texts)), 2):
            rows.append({"prompt_id": f"p{i}", "prompt": prompts[i], "chosen": texts[b], "rejected": texts[a],
                         "chosen_index": b, "rejected_index": a, "chosen_win_rate": win[b],
                         "rejected_win_rate": win[a], "label_probability": 0.5 + 0.1 * (b - a),
                         "chosen_finished": finished[b], "rejected_finished": finished[a]})
    return rows


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("grouped")
    tokenizer = build_tiny_policy(root / "parent", seed=0)
    build_tiny_policy(root / "anchor", seed=1, tokenizer=tokenizer)
    write_table(all_pairs_rows(), root / "prefs.parquet", "preferences")
    score_preferences(root / "prefs.parquet", root / "scored.parquet", reference=root / "parent",
                      anchor=root / "anchor", batch_size=8, max_length=512, dtype="float32")
    write_table(all_pairs_rows(2, seed=1), root / "val_prefs.parquet", "preferences")
    score_preferences(root / "val_prefs.parquet", root / "val.parquet", reference=root / "parent",
                      anchor=root / "anchor", batch_size=8, max_length=512, dtype="float32")
    return root


def grouped(**changes) -> TrainSettings:
    return fast_settings(**{"prompts_per_batch": 2, "epochs": 2, **changes})


# ----------------------------------------------------------------------------- collation and gradients


def test_each_distinct_sequence_is_one_row(data):
    _, tokenizer = load_policy(data / "parent", dtype="float32", device="cpu")
    features = pair_features(tokenizer, read_scored(data / "scored.parquet"), 512)
    sequences, _, chosen, rejected = unique_sequences(features)
    assert len(features) == NUM_PROMPTS * 6 and len(sequences) == NUM_PROMPTS * 4
    for f, c, r in zip(features, chosen, rejected):
        assert sequences[c] == f["chosen_input_ids"] and sequences[r] == f["rejected_input_ids"]


@pytest.mark.parametrize("loss", ["dpo", "ipo", "inpo", "sppo"])
def test_a_grouped_batch_has_the_per_pair_batch_loss_and_gradient(data, loss):
    model, tokenizer = load_policy(data / "parent", dtype="float32", device="cpu")
    table = read_scored(data / "scored.parquet")
    features = pair_features(tokenizer, table, 512)
    groups = prompt_groups(features, table.column("prompt").to_pylist())
    assert len(groups) == NUM_PROMPTS and all(len(g) == 6 for g in groups)

    def loss_and_grads(batch):
        model.zero_grad()
        mean, losses, logps = pair_loss(model, batch, loss, eta=8.0, tau=0.5 / 8.0)
        mean.backward()
        return mean.detach(), losses.detach(), logps.detach(), [p.grad.clone() for p in model.parameters()]

    plain = loss_and_grads(PairCollator(tokenizer.pad_token_id)(features))
    batch = GroupCollator(tokenizer.pad_token_id)(groups)
    assert batch["input_ids"].shape[0] == NUM_PROMPTS * 4 and batch["chosen_index"].shape == (NUM_PROMPTS * 6,)
    fast = loss_and_grads(batch)
    torch.testing.assert_close(fast[0], plain[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[1], plain[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast[2], plain[2], rtol=1e-5, atol=1e-4)
    scale = max(float(g.abs().max()) for g in plain[3])  # float32 sums in another order: relative to the largest
    for g_fast, g_plain in zip(fast[3], plain[3]):
        torch.testing.assert_close(g_fast, g_plain, rtol=1e-3, atol=1e-5 * scale)


def test_pair_features_in_a_validation_batch_are_collated_per_pair(data):
    _, tokenizer = load_policy(data / "parent", dtype="float32", device="cpu")
    features = pair_features(tokenizer, read_scored(data / "val.parquet"), 512)
    a, b = GroupCollator(tokenizer.pad_token_id)(features), PairCollator(tokenizer.pad_token_id)(features)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- batches


def test_pair_batches_cover_every_pair_once_with_whole_prompts():
    groups = [[{"g": g, "j": j} for j in range(g + 1)] for g in range(7)]
    batches = pair_batches(groups, 3, seed=0)
    assert [len({groups_of(groups, i) for i in b}) for b in batches] == [3, 3, 1]
    assert sorted(i for b in batches for i in b) == list(range(sum(len(g) for g in groups)))
    assert batches == pair_batches(groups, 3, seed=0) and batches != pair_batches(groups, 3, seed=1)


def pair_key(feature) -> tuple:
    return tuple(feature["chosen_input_ids"]), tuple(feature["rejected_input_ids"])


def groups_of(groups, index):
    for g, group in enumerate(groups):
        if index < len(group):
            return g
        index -= len(group)


def test_the_trainer_batches_are_k_whole_prompts_covering_every_pair_once(data, tmp_path):
    orders = trainer_orders(data, tmp_path, seed=0)
    assert sorted(orders[0]) == sorted(orders[1]) == list(range(NUM_PROMPTS))


def test_the_prompt_order_is_the_seeds(data, tmp_path):
    orders = trainer_orders(data, tmp_path / "a", seed=0)
    assert orders == trainer_orders(data, tmp_path / "b", seed=0)
    assert orders != trainer_orders(data, tmp_path / "c", seed=1)


def trainer_orders(data, tmp_path, seed: int) -> list[list[int]]:
    """The prompt groups of two epochs in the order the Trainer's batches hold them (checked: K
    whole prompts a batch, every pair once an epoch)."""
    training = PreferenceTraining(data / "parent", [data / "scored.parquet"], tmp_path / "out",
                                  resume_dir=tmp_path / "side", settings=grouped(seed=seed))
    training.setup()
    trainer = training.trainer
    groups = trainer.train_dataset
    assert len(groups) == NUM_PROMPTS and training.stats["prompts"] == NUM_PROMPTS
    trainer.data_collator = lambda items: items  # the groups as the sampler batches them
    orders = []
    for epoch in range(2):
        loader = trainer.get_train_dataloader()
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        batches = list(loader)
        assert [len(b) for b in batches] == [2, 2, 1]  # K prompts; the last batch holds fewer
        seen = [pair_key(f) for b in batches for group in b for f in group]
        assert sorted(seen) == sorted(pair_key(f) for group in groups for f in group)  # every pair once
        keys = [[pair_key(f) for f in g] for g in groups]
        for b in batches:
            assert all([pair_key(f) for f in group] in keys for group in b)  # each prompt's pairs together
        orders.append([keys.index([pair_key(f) for f in group]) for b in batches for group in b])
    training.trainer = None
    return orders


# ----------------------------------------------------------------------------- training


def test_grouped_training_takes_one_step_per_k_prompts_and_validates(data, tmp_path):
    stats = train_policy(data / "parent", [data / "scored.parquet"], tmp_path / "out", resume_dir=tmp_path / "side",
                         settings=grouped(), validation=[data / "val.parquet"])
    assert stats["global_step"] == 2 * math.ceil(NUM_PROMPTS / 2) and stats["pairs"] == NUM_PROMPTS * 6
    assert stats["validation"]["selected_step"] is not None
    assert (tmp_path / "out" / "model.safetensors").is_file() and not (tmp_path / "side").exists()


def test_linepo_train_prompts_per_batch_end_to_end(data, tmp_path, capsys):
    code = main(["train", "--policy", str(data / "parent"), "--scored", str(data / "scored.parquet"),
                 "--out", str(tmp_path / "out"), "--resume-dir", str(tmp_path / "side"), "--loss", "inpo",
                 "--eta", "8", "--eta-tau", "0.5", "--epochs", "1", "--learning-rate", "1e-3",
                 "--prompts-per-batch", "2"])
    assert code == 0
    import json

    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["global_step"] == 3 and stats["prompts"] == NUM_PROMPTS
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_unset_prompts_per_batch_keeps_the_resume_fingerprint():
    from linepo.stages.training import fingerprint

    settings = fast_settings()
    assert "prompts_per_batch" not in fingerprint("hub/x", [], settings)["settings"]
    assert fingerprint("hub/x", [], grouped())["settings"]["prompts_per_batch"] == 2


def test_grouped_resume_after_crash_is_byte_identical(data, tmp_path):
    settings = grouped(epochs=3, save_steps=2)  # 3 steps per epoch, 9 in all
    full, side = train_full_and_crashed(data / "parent", [data / "scored.parquet"], tmp_path, settings)
    resumed = train_policy(data / "parent", [data / "scored.parquet"], tmp_path / "cut", resume_dir=side,
                           settings=settings)
    assert resumed["resumed_from_step"] == 4
    assert resumed["global_step"] == full["global_step"] == 9
    assert sha256(tmp_path / "cut" / "model.safetensors") == sha256(tmp_path / "full" / "model.safetensors")


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("value", [0, -1, 2.5, "3", True])
def test_bad_prompts_per_batch_is_one_line_naming_the_key(value):
    with pytest.raises(InputError) as err:
        TrainSettings(prompts_per_batch=value).validate()
    assert "prompts_per_batch" in str(err.value) and "\n" not in str(err.value)


def test_prompts_per_batch_refuses_accumulation_and_processes():
    with pytest.raises(InputError, match=r"^--prompts-per-batch \(training.prompts_per_batch\).*accumulation"):
        TrainSettings(prompts_per_batch=2, gradient_accumulation_steps=2, batch_size=32).validate()
    with pytest.raises(InputError, match=r"training.prompts_per_batch.*one process"):
        TrainSettings(prompts_per_batch=2).check_prompts_per_batch(2)


@pytest.mark.parametrize("flags, message", [
    (["--prompts-per-batch", "0"], "training.prompts_per_batch"),
    (["--prompts-per-batch", "2", "--num-processes", "2"], "training.prompts_per_batch"),
    (["--prompts-per-batch", "2", "--gradient-accumulation-steps", "2"], "training.prompts_per_batch"),
])
def test_cli_bad_prompts_per_batch_exits_2_with_one_line(data, tmp_path, capsys, flags, message):
    code = main(["train", "--policy", str(data / "parent"), "--scored", str(data / "scored.parquet"),
                 "--out", str(tmp_path / "out"), "--resume-dir", str(tmp_path / "side"), *flags])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err
    assert not list(tmp_path.iterdir())


def config_with(edit):
    """The default with per-pair batches and per-pair scoring (``prompts_per_batch`` and
    ``scoring.deduplicate`` unset, as the keys' tests need), edited."""
    config = default_realisation()
    config["training"].pop("prompts_per_batch", None)
    config.get("scoring", {}).pop("deduplicate", None)
    edit(config)
    return validate_config(config)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["training"].update(prompts_per_batch=0), "config key training.prompts_per_batch"),
    (lambda c: c["training"].update(prompts_per_batch=-2), "config key training.prompts_per_batch"),
    (lambda c: c["training"].update(prompts_per_batch=1.5), "config key training.prompts_per_batch"),
    (lambda c: c["training"].update(prompts_per_batch=2, gradient_accumulation_steps=2),
     "config key training.prompts_per_batch"),
    (lambda c: (c["training"].update(prompts_per_batch=2), c.setdefault("resources", {}).setdefault(
        "train", {}).update(gpu=2)), "config key training.prompts_per_batch"),
    (lambda c: c.setdefault("scoring", {}).update(deduplicate="yes"), "config key scoring.deduplicate"),
    (lambda c: (c["training"].update(gradient_accumulation_steps=2, batch_size=32),
                c["runs"]["inpo"].setdefault("training", {}).update(prompts_per_batch=3)),
     "config key runs.inpo.training.prompts_per_batch"),
    (lambda c: (c["training"].update(gradient_accumulation_steps=2, batch_size=32),
                c["runs"]["inpo"].update(round_overrides={"2": {"training": {"prompts_per_batch": 3}}})),
     "config key runs.inpo.round_overrides.2.training.prompts_per_batch"),
])
def test_bad_config_values_fail_with_one_line_naming_the_key(edit, message):
    with pytest.raises(InputError) as err:
        config_with(edit)
    assert str(err.value).startswith(message) and "\n" not in str(err.value), str(err.value)


# ----------------------------------------------------------------------------- node ids


def plan_ids(plan) -> dict:
    return {kind: set(getattr(plan, kind)) for kind in ("policies", "samples", "prefs", "scored")}


def test_unset_keys_leave_every_node_id_as_without_them():
    config = config_with(lambda c: None)
    assert config["training"]["prompts_per_batch"] is None and config["scoring"]["deduplicate"] is False
    absent = copy.deepcopy(config)
    del absent["training"]["prompts_per_batch"], absent["scoring"]["deduplicate"]
    assert plan_ids(build_plan(config)) == plan_ids(build_plan(absent))
    explicit = config_with(lambda c: (c["training"].update(prompts_per_batch=None),
                                      c.setdefault("scoring", {}).update(deduplicate=False)))
    assert plan_ids(build_plan(explicit)) == plan_ids(build_plan(config))


def test_prompts_per_batch_changes_train_nodes_only():
    before = build_plan(config_with(lambda c: None))
    after = build_plan(config_with(lambda c: c["training"].update(prompts_per_batch=4)))
    a, b = plan_ids(before), plan_ids(after)
    # round 1's samples come from the SFT policy: the same; the trained policies all change
    sft = set(before.sfts.values())
    assert (a["policies"] - sft).isdisjoint(b["policies"] - sft) and a["policies"] & b["policies"] == sft
    assert {s for s in a["samples"] if before.samples[s].policy in sft} <= b["samples"]
    first_scored = {s for s, n in before.scored.items() if n.reference in sft and n.anchor in sft}
    assert first_scored and first_scored <= b["scored"]
    assert any(after.train_settings(p).get("prompts_per_batch") == 4 for p in b["policies"] - sft)
    assert all("prompts_per_batch" not in before.train_settings(p) for p in a["policies"] - sft)


def test_deduplicate_changes_score_nodes_and_downstream_only():
    before = build_plan(config_with(lambda c: None))
    after = build_plan(config_with(lambda c: c.setdefault("scoring", {}).update(deduplicate=True)))
    a, b = plan_ids(before), plan_ids(after)
    assert a["scored"].isdisjoint(b["scored"])
    sft = set(before.sfts.values())
    assert {s for s in a["samples"] if before.samples[s].policy in sft} <= b["samples"]
    assert {p for p in a["prefs"] if before.samples[before.prefs[p].sample].policy in sft} <= b["prefs"]
    assert a["policies"] & b["policies"] == sft


# ----------------------------------------------------------------------------- scoring


def test_distinct_responses_index_every_row():
    first, index = distinct_responses(["a", "a", "b", "a"], ["x", "x", "x", "x"], [True, True, True, False],
                                      [None] * 4, [None, None, None, None])
    assert first == [0, 2, 3] and index == [0, 0, 1, 2]


def test_deduplicated_scoring_equals_plain_scoring(data, tmp_path):
    plain = read_table(data / "scored.parquet", "scored")
    stats = score_preferences(data / "prefs.parquet", tmp_path / "dedup.parquet", reference=data / "parent",
                              anchor=data / "anchor", batch_size=8, max_length=512, dtype="float32",
                              deduplicate=True)
    dedup = read_table(tmp_path / "dedup.parquet", "scored")
    for name in ("reference_chosen_logp", "reference_rejected_logp", "anchor_chosen_logp", "anchor_rejected_logp"):
        np.testing.assert_allclose(dedup.column(name).to_pylist(), plain.column(name).to_pylist(),
                                   rtol=1e-5, atol=1e-4)
    for name in ("prompt", "chosen", "rejected", "label_probability"):
        assert dedup.column(name).to_pylist() == plain.column(name).to_pylist()
    assert stats["pairs"] == NUM_PROMPTS * 6


def test_linepo_score_deduplicate_flag(data, tmp_path, capsys):
    code = main(["score", "--preferences", str(data / "prefs.parquet"), "--reference", str(data / "parent"),
                 "--anchor", str(data / "parent"), "--out", str(tmp_path / "s.parquet"), "--dtype", "float32",
                 "--deduplicate"])
    assert code == 0 and (tmp_path / "s.parquet").is_file()


# ----------------------------------------------------------------------------- the workflow


@pytest.mark.slow
def test_the_workflow_reruns_nothing_for_unset_keys_and_the_score_chain_for_deduplicate(tmp_path):
    from workflow_utils import dry_run, edit_config, snakemake, tiny_config, workflow_with_config

    config = tiny_config(runs={"inpo": {"algorithm": "inpo", "eta": 4.0, "eta_tau": 0.6, "rounds": 1}})
    workdir = workflow_with_config(tmp_path, config)
    result = snakemake(workdir, "--cores", "2")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    edit_config(workdir, lambda c: (c.setdefault("scoring", {}).update(deduplicate=False),
                                    c.setdefault("training", {}).update(prompts_per_batch=None)))
    assert dry_run(workdir) == []  # the defaults spelt out: same ids, same params, same commands
    def first_split(jobs) -> set:  # the rules planned on round 1's first split (sampled by the SFT policy)
        return {rule for rule, w in jobs if w.get("round") == "1" and w.get("split") == "0"}

    edit_config(workdir, lambda c: c["scoring"].update(deduplicate=True))
    jobs = dry_run(workdir)
    assert {"score", "train"} <= first_split(jobs) and not first_split(jobs) & {"sample", "judge", "pairs"}
    edit_config(workdir, lambda c: (c["scoring"].update(deduplicate=False),
                                    c["training"].update(prompts_per_batch=2)))
    jobs = dry_run(workdir)
    assert "train" in first_split(jobs) and not first_split(jobs) & {"sample", "judge", "pairs", "score"}
