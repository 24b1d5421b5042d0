"""The workflow end to end on a paper-shaped tiny config with the real tokenizers.

configs/paper.yaml's shape at toy size: a Qwen2-architecture SFT policy with the real Qwen2
tokenizer and ChatML template, imported from a weights-only folder plus a separate tokenizer
(as the paper's released checkpoint is used), UltraFeedback-schema training prompts in 2
splits, held-out prompts for checkpoint selection, the OffsetBias pairwise judge format on a
Llama-architecture judge with the real Llama-3 tokenizer and template, a Llama-3 reward model
as the eval judge, AlpacaEval-schema eval prompts; DPO and LINE-PO over 2 rounds. Real rows
from ../shared/data are used where that folder exists, else stand-ins in the same schemas.

    HF_HUB_OFFLINE=1 python -m pytest tests/test_real_workflow.py -q
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from real_models import (  # noqa: E402
    fixed_distribution_lm,
    llama3_tokenizer,
    qwen2_tokenizer,
    save_model,
    save_tokenizer,
    tiny_causal_lm,
    tiny_reward_model,
)
from workflow_utils import REPO, snakemake, workflow_with_config  # noqa: E402

from linepo.schemas import read_table  # noqa: E402

pytestmark = pytest.mark.slow

SHARED = REPO.parent / "shared" / "data"
ENDOFTEXT, IM_END = 151643, 151645
BEGIN_OF_TEXT, START_HEADER, END_HEADER, EOT = 128000, 128006, 128007, 128009


def _stand_in_prompts(path: Path, texts: list[str], layout: str) -> Path:
    """A file in the real data set's schema (used only where ../shared/data is absent)."""
    if layout == "ultrafeedback":
        rows = [{"prompt": t, "prompt_id": hashlib.sha256(t.encode()).hexdigest(),
                 "chosen": [{"content": t, "role": "user"}, {"content": "Yes.", "role": "assistant"}],
                 "rejected": [{"content": t, "role": "user"}, {"content": "No.", "role": "assistant"}],
                 "messages": [{"content": t, "role": "user"}, {"content": "Yes.", "role": "assistant"}],
                 "score_chosen": 8.0, "score_rejected": 5.0} for t in texts]
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:  # alpaca_eval
        path.write_text(json.dumps([{"dataset": "helpful_base", "instruction": t, "output": "Sure.",
                                     "generator": "gpt4_turbo"} for t in texts]))
    return path


def data_files(root: Path) -> dict[str, Path]:
    if (SHARED / "ultrafeedback/sample.jsonl").is_file():
        return {"train": SHARED / "ultrafeedback/sample.jsonl", "held_out": SHARED / "ultrachat/sample.jsonl",
                "eval": SHARED / "alpaca_eval/eval_set.json"}
    from linepo import toy as embedded

    train, held = embedded.prompts("train", 24), embedded.prompts("eval", 16)
    return {"train": _stand_in_prompts(root / "uf.jsonl", train[:16], "ultrafeedback"),
            "held_out": _stand_in_prompts(root / "uc.jsonl", train[16:], "ultrafeedback"),
            "eval": _stand_in_prompts(root / "eval_set.json", held, "alpaca_eval")}


WORDS = {" Sure": 2.0, " the": 1.5, " answer": 1.2, " is": 1.0, " yes": 0.8}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("real_models")
    qwen = qwen2_tokenizer()
    logits = {qwen.convert_tokens_to_ids(qwen.tokenize(w))[0]: v for w, v in WORDS.items()}
    logits[IM_END] = math.log(0.25 / 0.75 * sum(math.exp(v) for v in logits.values()))
    policy = fixed_distribution_lm(qwen, logits)
    save_model(policy, qwen, root / "sft_full", generation_eos=[ENDOFTEXT])  # as Qwen2-1.5B base ships it
    policy.save_pretrained(root / "sft_weights")  # what the paper's training script saves: no tokenizer
    save_tokenizer(qwen, root / "qwen_tokenizer")
    llama = llama3_tokenizer()
    save_model(tiny_causal_lm(llama, "llama", seed=1), llama, root / "judge", generation_eos=[128001, EOT])
    save_model(tiny_reward_model(llama, seed=2), llama, root / "reward")
    return root


def paper_shaped_config(models: Path, data: dict) -> dict:
    return {
        "synthetic": {"settings": {}},
        "policy": {"sft": str(models / "sft_weights"), "tokenizer": str(models / "qwen_tokenizer"),
                   "dtype": "float32"},
        "prompts": {"source": str(data["train"]), "max_prompts": 16, "num_splits": 2, "seed": 0},
        "eval_prompts": {"source": str(data["eval"]), "max_prompts": 8},
        "validation": {"enabled": True, "prompts": {"source": str(data["held_out"]), "max_prompts": 4},
                       "eval_steps": 1},
        "sampling": {"n": 4, "temperature": 0.8, "top_p": 0.95, "max_new_tokens": 16, "batch_size": 32},
        # A random judge's p(a) + p(b) is ~2/128256: admit it (min_answer_mass 0) so that its
        # content-dependent preference trains the policy; the default would fail every comparison.
        "judge": {"type": "pairwise_lm", "model": str(models / "judge"), "batch_size": 16, "min_answer_mass": 0.0},
        "preferences": {"selection": "best_vs_worst", "use_outcomes": False},
        "scoring": {"batch_size": 16, "max_length": 512},
        "training": {"epochs": 1, "batch_size": 4, "learning_rate": 1.0e-3, "max_length": 512, "warmup_ratio": 0.1,
                     "weight_decay": 0.01, "max_grad_norm": 0.0, "save_steps": 2},
        "evaluation": {"judge": {"type": "reward_model", "model": str(models / "reward"), "batch_size": 16},
                       "decoding": {"n": 1, "temperature": 0.7, "top_p": 0.95, "max_new_tokens": 16},
                       "curves": False, "bootstrap": 50},
        "runs": {"dpo": {"algorithm": "dpo", "eta": 4.0},
                 "linepo": {"algorithm": "linepo", "eta": 4.0, "eta_tau": 1 / 3, "rounds": 2,
                            "reference_moves": [2], "round_overrides": {"2+": {"eta": 2.0}}}},
    }


@pytest.fixture(scope="module")
def run(models, tmp_path_factory):
    root = tmp_path_factory.mktemp("real_workflow")
    data = data_files(root)
    directory = workflow_with_config(root / "work", paper_shaped_config(models, data))
    result = snakemake(directory, "--cores", "2", timeout=2400)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return directory, data


def test_the_imported_policy_renders_chatml_and_stops_at_im_end(run):
    from linepo.stages.models import format_prompt, load_policy

    directory, _ = run
    (sft,) = directory.glob("results/sft/*/model")
    _, tokenizer = load_policy(sft, device="cpu")
    rendered = format_prompt(tokenizer, "Hi")
    assert rendered.startswith("<|im_start|>system\n") and rendered.endswith("<|im_start|>user\nHi<|im_end|>\n"
                                                                           "<|im_start|>assistant\n")
    samples = [r for path in directory.glob("results/samples/r*/s*/*.parquet")
               for r in read_table(path, "samples").to_pylist()]
    finished = [r for r in samples if r["finish_reason"] == "stop"]
    assert len(samples) >= 5 * 16 and len(finished) > len(samples) // 2
    assert {r["stop_token_id"] for r in finished} == {IM_END}  # never the tokenizer's <|endoftext|>
    scored = [r for path in directory.glob("results/scored/r*/s*/*.parquet")
              for r in read_table(path, "scored").to_pylist()]
    assert scored and any(r["chosen_stop_token_id"] == IM_END for r in scored)
    assert all((r["chosen_stop_token_id"] is not None) == r["chosen_finished"] for r in scored)


def test_the_judge_reads_the_offsetbias_prompt_in_the_llama3_template(run, models):
    from linepo.stages.judges import OFFSETBIAS_USER_TEMPLATE, make_judge

    judge = make_judge({"type": "pairwise_lm", "model": str(models / "judge"), "min_answer_mass": 0.0})
    text = judge.format_prompt("Name a colour.", "Red.", "Blue.")
    user = OFFSETBIAS_USER_TEMPLATE.format(input="Name a colour.", output_1="Red.", output_2="Blue.")
    assert text == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n" + user.strip()
                    + "<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nOutput (")
    tokenizer = llama3_tokenizer()
    assert judge.choice_ids == (tokenizer.convert_tokens_to_ids("a"), tokenizer.convert_tokens_to_ids("b"))
    assert tokenizer.decode(judge.forced_ids) == "Output ("
    ids = judge._encode_conversations([("Name a colour.", "Red.", "Blue.")])[0] + judge.forced_ids
    assert ids[0] == BEGIN_OF_TEXT and ids.count(BEGIN_OF_TEXT) == 1 and ids.count(EOT) == 1
    assert ids[-len(judge.forced_ids) - 3:-len(judge.forced_ids)] == tokenizer("<|start_header_id|>assistant"
                                                                              "<|end_header_id|>\n\n",
                                                                              add_special_tokens=False)["input_ids"][-3:]


def test_failed_judgments_are_counted_honestly(run, models, tmp_path):
    """The default min_answer_mass fails every comparison of a random 128k-vocabulary judge: counted, never a coin."""
    from linepo.stages.preferences import JudgeFailed, judge_samples

    directory, _ = run
    samples = next(directory.glob("results/samples/r1/s0/*.parquet"))
    judge = {"type": "pairwise_lm", "model": str(models / "judge")}
    with pytest.raises(JudgeFailed, match=r"comparisons failed .*min_answer_mass.*nothing written"):
        judge_samples(samples, judge, tmp_path / "refused.parquet")  # the default limit stops the step
    assert not (tmp_path / "refused.parquet").exists()
    stats = judge_samples(samples, {**judge, "max_failed_fraction": 1.0}, tmp_path / "j.parquet")
    table = read_table(tmp_path / "j.parquet", "judgments").to_pylist()
    differing = [r for r in table if r["prob_a_wins"] is None]
    assert stats["failed"] == len(differing) > 0 and all(r["failed"] and r["outcome"] is None for r in differing)
    trained = read_table(next(directory.glob("results/prefs/r1/s0/*/judgments.parquet")), "judgments").to_pylist()
    assert not any(r["failed"] for r in trained)  # min_answer_mass 0 in the workflow's judge


def test_the_reward_model_reads_its_template_and_evaluation_completes(run, models):
    from linepo.stages.judges import make_judge

    directory, data = run
    judge = make_judge({"type": "reward_model", "model": str(models / "reward")})
    assert judge.format_text("Q?", "A.") == ("<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nQ?<|eot_id|>"
                                             "<|start_header_id|>assistant<|end_header_id|>\n\nA.<|eot_id|>")
    matrix = (directory / "results/summary/win_rates.csv").read_text().splitlines()
    assert matrix[0].split(",")[1:] == ["SFT", "DPO", "LINE-PO", "Avg"]
    records = json.loads((directory / "results/eval/alpaca_eval/linepo/model_outputs.json").read_text())
    if data["eval"].suffix == ".json":
        expected = [r["instruction"] for r in json.loads(data["eval"].read_text())][:8]
        assert [r["instruction"] for r in records] == expected  # AlpacaEval's order
    for model in directory.glob("results/policies/r*/s*/*/model"):
        assert (model / "linepo_selection.json").is_file()  # checkpoint selection ran on every step
        assert not list(model.glob("*.bin"))
