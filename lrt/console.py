"""What a run prints: our own summary lines, one progress bar, and no third-party chatter.

A healthy `python train.py` prints the run's settings, the model in one line, a progress bar
with the run's real length, a line per validation and the final table. Everything else that
the libraries print on a healthy run is either fixed where it is ours or silenced here, each
by its own message and module, so that a new warning still shows.
"""

from __future__ import annotations

import logging
import warnings

import torch
from lightning.pytorch.callbacks import RichProgressBar

# (message regex, module regex) of third-party warnings that say nothing true about our runs.
THIRD_PARTY_NOISE = [
    # Lightning calls torch's deprecated pytree API itself (lightning 2.6 with torch 2.13).
    (
        r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        r"lightning\.pytorch\.utilities\._pytree",
    ),
    # The frozen base is in eval mode on purpose; `model_summary` says so in our own line.
    (r"Found \d+ module\(s\) in eval mode at the start of training", r"lightning\.pytorch\.loops"),
    # On a resume, `KeepMetricsOnResume` puts the earlier rows back into metrics.csv.
    (r"Experiment logs directory .* exists and is not empty", r"lightning\.fabric\.loggers"),
    # peft reads the old attribute name when it wraps the base (LoRA baselines, RiM).
    (r"`is_gradient_checkpointing` is deprecated", r"transformers\.modeling_utils"),
]


def quiet_libraries() -> None:
    """Silence what Lightning and transformers print on every healthy run.

    Lightning's start-up notes (devices, a litlogger tip, `max_steps reached`) are INFO records
    of its own loggers: raised to WARNING, its real warnings still show. transformers' weight
    loading bar is disabled (our own progress bar follows it).
    """
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    for message, module in THIRD_PARTY_NOISE:
        warnings.filterwarnings("ignore", message=message, module=module)


def _millions(n: int) -> str:
    return f"{n / 1e6:.1f} M" if n >= 100_000 else f"{n:,}"


def model_summary(base: torch.nn.Module, reasoner: torch.nn.Module, base_name: str) -> str:
    """One line in place of Lightning's model table: what trains and what stays frozen."""
    trainable = sum(p.numel() for p in reasoner.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in base.parameters())
    config = getattr(reasoner, "config", None)
    k = f", K={config.num_latents}" if config is not None else ""
    return (
        f"reasoner: {_millions(trainable)} trainable parameters{k}; base {base_name}: "
        f"{_millions(frozen)} parameters, frozen and in eval mode"
    )


class RunProgressBar(RichProgressBar):
    """Lightning's rich bar, labelled by the stage instead of "Epoch 0/-2".

    A run is one pass of a sampler that yields exactly the run's batches (`StepBatchSampler`),
    with `max_epochs` unset, so the bar's own count (done/total batches) is the run's length
    and Lightning's epoch label only says -1.
    """

    def __init__(self, stage: str) -> None:
        super().__init__()
        self.stage = stage

    def _get_train_description(self, current_epoch: int) -> str:
        return f"{self.stage} batches"
