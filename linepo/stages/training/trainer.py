"""The Trainer that fits a policy to scored pairs: ``transformers.Trainer`` with a preference loss.

:class:`PreferenceTrainer` only overrides ``compute_loss`` (and ``prediction_step`` for the
validation loss): one forward over the chosen and rejected sequences of a batch
concatenated (2B rows), summed response log-probs (:func:`linepo.stages.scoring.response_logprobs`,
the same code that scored π_ref and μ_k), then ``preference_loss`` from :mod:`linepo.losses`,
averaged over the batch. A non-finite loss in any process stops every process at once.
"""

from __future__ import annotations

import logging

log = logging.getLogger("linepo.stages.training")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or ±inf: training stops at once and writes no policy."""


def pair_loss(model, batch: dict, loss_name: str, *, eta: float, tau: float):
    """(mean loss, per-pair losses (B,), policy log-probs (2B,)) of a collated batch; with grad.

    A grouped batch (:class:`.groups.GroupCollator`) holds each distinct sequence once; its
    ``chosen_index``/``rejected_index`` pick each pair's log-probs from those rows.
    """
    import torch

    from linepo.losses import PairLogProbs, preference_loss
    from linepo.stages.scoring import response_logprobs

    logps = response_logprobs(model, batch["input_ids"], batch["attention_mask"], batch["response_mask"])  # (2B,)
    if "chosen_index" in batch:  # (U,) distinct rows → (2B,) chosen then rejected
        logps = torch.cat([logps[batch["chosen_index"]], logps[batch["rejected_index"]]])
    n = logps.shape[0] // 2
    pairs = PairLogProbs(
        policy_chosen=logps[:n],
        policy_rejected=logps[n:],
        reference_chosen=batch["reference_chosen_logp"],
        reference_rejected=batch["reference_rejected_logp"],
        anchor_chosen=batch["anchor_chosen_logp"],
        anchor_rejected=batch["anchor_rejected_logp"],
        chosen_win_rate=batch["chosen_win_rate"],
        rejected_win_rate=batch["rejected_win_rate"],
        label_probability=batch["label_probability"],
    )
    losses = preference_loss(loss_name, pairs, eta=eta, tau=tau)  # (B,)
    return losses.mean(), losses, logps


def _trainer_class():
    """:class:`PreferenceTrainer`, defined on first use so importing this module stays light."""
    global PreferenceTrainer
    if "PreferenceTrainer" in globals():
        return PreferenceTrainer
    import torch
    from transformers import Trainer

    class PreferenceTrainer(Trainer):  # noqa: F811 - defined once, lazily
        """``Trainer`` whose loss is a preference loss on summed response log-probs."""

        loss_is_scaled_for_ga = False  # compute_loss returns a per-batch mean

        def __init__(self, *args, loss_name: str, eta: float, tau: float, **kwargs):
            super().__init__(*args, **kwargs)
            self.loss_name, self.eta, self.tau = loss_name, eta, tau
            self._tokens = 0  # non-padding tokens trained on in this process (a device tensor: no sync)
            self._metric_sums: dict[str, torch.Tensor] = {}
            self._metric_count = 0

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            loss, _, logps = pair_loss(model, inputs, self.loss_name, eta=self.eta, tau=self.tau)
            if not self._finite_everywhere(loss.detach()):
                raise NonFiniteLossError(
                    f"{self.loss_name} loss is {float(loss.detach())} at optimizer step {self.state.global_step + 1} "
                    f"(eta={self.eta}); training stopped, no policy written")
            if model.training:
                self._tokens = self._tokens + inputs["attention_mask"].sum()
                self._track(inputs, logps.detach(), loss.detach())
            return (loss, {"logps": logps}) if return_outputs else loss

        def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
            """The validation loss of a batch (the same loss as training, no grad); no logits."""
            inputs = self._prepare_inputs(inputs)
            with torch.no_grad(), self.compute_loss_context_manager():
                loss, _, _ = pair_loss(model, inputs, self.loss_name, eta=self.eta, tau=self.tau)
            return loss.detach(), None, None

        def _finite_everywhere(self, loss) -> bool:
            """Whether the loss is finite in *every* process: all of them stop together, none hangs
            in the next gradient all-reduce waiting for a process that raised."""
            finite = torch.isfinite(loss).to(torch.float32).reshape(1)
            if self.args.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
                torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
            return bool(finite.item())

        @property
        def tokens_seen(self) -> int:
            """Non-padding tokens trained on, summed over all processes (a collective call)."""
            tokens = torch.as_tensor(self._tokens, device=self.args.device).reshape(1)
            if self.args.world_size > 1:
                tokens = self.accelerator.reduce(tokens, reduction="sum")
            return int(tokens.item())

        def _track(self, inputs, logps, loss):
            n = logps.shape[0] // 2
            margin = (logps[:n] - logps[n:]) - (inputs["reference_chosen_logp"] - inputs["reference_rejected_logp"])
            values = {"margin": margin.mean(), "accuracy": (margin > 0).float().mean()}
            for key, value in values.items():
                self._metric_sums[key] = self._metric_sums.get(key, 0) + value
            self._metric_count += 1

        def log(self, logs, start_time=None):
            if self._metric_count and "loss" in logs:
                for key, total in self._metric_sums.items():
                    logs[key] = round(float(total) / self._metric_count, 4)
                self._metric_sums, self._metric_count = {}, 0
            super().log(logs, start_time)

    return PreferenceTrainer


def _log_callback():
    from transformers import TrainerCallback

    class LogCallback(TrainerCallback):
        """Trainer's log dicts as one log line each (instead of printing them to stdout)."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                extra = " ".join(f"{k} {logs[k]:.4g}" for k in ("margin", "accuracy", "learning_rate", "grad_norm")
                                 if isinstance(logs.get(k), (int, float)))
                log.info("train step %d/%d: loss %.4g %s", state.global_step, state.max_steps, logs["loss"], extra)

    return LogCallback()


