"""Training: one prox step fits the policy to scored preference pairs (DPO, IPO, INPO or SPPO loss).

- :mod:`.settings` — :class:`TrainSettings` (one field per setting; the CLI and schema derive from it),
- :mod:`.data` — scored pairs as tokenised training examples,
- :mod:`.groups` — grouped batches (``prompts_per_batch``): all pairs of K prompts, each distinct sequence once,
- :mod:`.trainer` — the ``transformers.Trainer`` with a preference loss,
- :mod:`.checkpoints` — the side folder: resume checkpoints and validation-loss selection,
- :mod:`.recipe` — :class:`PreferenceTraining` (setup → train → save → cleanup) and :func:`train_policy`.
"""

from linepo.stages.training.checkpoints import FINGERPRINT_FILE, SELECTION_FILE, fingerprint, latest_checkpoint
from linepo.stages.training.data import PairCollator, pair_features, read_scored
from linepo.stages.training.recipe import PreferenceTraining, _warmup_arguments, train_policy
from linepo.stages.training.settings import MASTER_DTYPES, TrainSettings, is_main_process, world_size
from linepo.stages.training.trainer import NonFiniteLossError, pair_loss

__all__ = [
    "FINGERPRINT_FILE", "MASTER_DTYPES", "NonFiniteLossError", "PairCollator", "PreferenceTraining", "SELECTION_FILE",
    "TrainSettings", "_warmup_arguments", "fingerprint", "is_main_process", "latest_checkpoint", "pair_features",
    "pair_loss", "read_scored", "train_policy", "world_size",
]
