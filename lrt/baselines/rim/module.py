"""`stage=rim`'s LightningModule: grounding and refinement losses on LoRA + block embeddings.

Grounding: the NLL of each solution step read out after its own block (one block per step).
Refinement: the NLL of the final answer read out after every one of the K blocks, weighted by
`stage.refinement_weighting`. Both are one forward pass per micro-batch under the 4D mask of
`layout.py`, normalised by the global count of readout tokens like every stage's loss.

With `stage.phase=both` the switch happens at `grounding_steps`: the optimiser's moments are
reset, the learning rate restarts its warm-up and decay at `refinement_lr`, and LoRA dropout
becomes `refinement_dropout`. All three are functions of the step, so resuming anywhere ends
as the uninterrupted run would.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch

from lrt.baselines.rim.layout import build_layout
from lrt.baselines.rim.lora import set_dropout
from lrt.baselines.rim.model import MODE, RiMLM, layout_meta
from lrt.baselines.rim.settings import RiMSettings
from lrt.baselines.rim.steps import block_weights, step_texts
from lrt.checkpoint import check_base_model
from lrt.data.records import Record
from lrt.errors import CheckpointError, ConfigError
from lrt.training.base import StageModule
from lrt.training.optim import warmup_cosine

log = logging.getLogger(__name__)

Batch = dict[str, torch.Tensor]


class RiMModule(StageModule):
    """Trains the LoRA adapters and the block embeddings; validates greedy `rim` answers."""

    stage_name = MODE
    eval_mode = MODE
    lm: RiMLM
    settings: RiMSettings

    def __init__(self, lm: RiMLM, task: str, settings: RiMSettings, **run: int) -> None:
        super().__init__(lm, task, settings, **run)
        self._weights = torch.tensor(
            [0.0, *block_weights(settings.num_blocks, settings.refinement_weighting)]
        )

    def configure_model(self) -> None:
        if self.device_mesh is not None:
            raise ConfigError("stage=rim trains on one device or with DDP, not FSDP")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.lm.parameters() if p.requires_grad]

    def configure_optimizers(self) -> dict[str, Any]:
        o = self.settings.optim
        optimizer = torch.optim.AdamW(
            self.trainable_parameters(),
            lr=o.lr,
            betas=o.betas,
            eps=o.eps,
            weight_decay=o.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.lr_factor(step))
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    def lr_factor(self, step: int) -> float:
        """Multiplier of `optim.lr`: each phase has its own warm-up and cosine decay, and
        refinement peaks at `refinement_lr`."""
        s, o = self.settings, self.settings.optim
        start = s.phase_start(step)
        end = s.grounding_steps if s.phase == "both" and start == 0 else s.max_steps
        peak = s.refinement_lr / o.lr if s.phase_at(step) == "refinement" else 1.0
        return peak * warmup_cosine(step - start, o.warmup_steps, end - start, o.min_lr_ratio)

    # --- readouts ----------------------------------------------------------------------------

    def readouts(self, record: Record, answer: list[int], phase: str) -> list[list[int]]:
        """Token ids read out after each block: the steps (grounding), the answer with its EOS
        after each of the K blocks (refinement)."""
        if phase == "refinement":
            return [answer] * self.settings.num_blocks
        texts = step_texts(record, self.settings.num_blocks)
        return [self.lm.tokenizer(t, add_special_tokens=False).input_ids for t in texts]

    def readout_nll(self, chunk: tuple[Batch, list[list[list[int]]]]) -> torch.Tensor:
        """Weighted summed NLL of one micro-batch's readout tokens."""
        batch, readouts = chunk
        layout = build_layout(batch["attention_mask"], self.lm.memory.block_size, readouts)
        logp = self.lm.readout_logprobs(batch["input_ids"], layout)
        if self.settings.phase_at(self.global_step) == "grounding":
            return -logp.sum()
        weights = self._weights.to(logp.device)[layout.target_block]
        return -(logp * weights).sum()

    # --- training ----------------------------------------------------------------------------

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_start(batch, batch_idx)
        s = self.settings
        phase = s.phase_at(self.global_step)
        set_dropout(
            self.lm.base, s.grounding_dropout if phase == "grounding" else s.refinement_dropout
        )
        if s.phase == "both" and self.global_step == s.grounding_steps:
            self.optimizers().optimizer.state.clear()
            log.info("step %d: refinement starts; optimiser moments reset", self.global_step)

    def training_step(self, batch: Batch, batch_idx: int) -> None:
        started = time.perf_counter()
        phase = self.settings.phase_at(self.global_step)
        records = self.trainer.datamodule.train_records
        answers = [
            row[mask.bool()].tolist()
            for row, mask in zip(batch["answer_ids"], batch["answer_mask"], strict=True)
        ]
        readouts = [
            self.readouts(records[i], answer, phase) if slot >= 0 else []  # padding rows: none
            for i, slot, answer in zip(
                batch["index"].tolist(), batch["slot"].tolist(), answers, strict=True
            )
        ]
        b = batch["input_ids"].shape[0]
        size = self.settings.micro_batch_size or b
        chunks = [
            ({k: v[i : i + size] for k, v in batch.items()}, readouts[i : i + size])
            for i in range(0, b, size)
        ]
        tokens = self.all_sum(sum(len(t) for row in readouts for t in row))
        loss = self.optimizer_step_on(chunks, self.readout_nll, tokens)
        self.log("train/loss", float(loss), prog_bar=True, batch_size=b)
        self.log("train/refinement", float(phase == "refinement"), batch_size=b)
        self.log("train/lr", self.lr_schedulers().get_last_lr()[0], batch_size=b)
        self.log("train/step_time_s", time.perf_counter() - started, batch_size=b)

    # --- checkpoints -------------------------------------------------------------------------

    def _trained_keys(self) -> set[str]:
        return {name for name, p in self.named_parameters() if p.requires_grad}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Only what RiM trains (adapters, block embeddings): the base comes from its config."""
        keep = self._trained_keys()
        state = checkpoint["state_dict"]
        for key in [k for k in state if k not in keep]:
            del state[key]
        checkpoint["lrt"] = {
            "base_model": self.lm.backbone.name,
            "rim": layout_meta(self.settings),
            "skipped_nonfinite": self.skipped_nonfinite,
            "stage": self.stage_name,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("lrt") or {}
        if meta.get("stage") != self.stage_name:
            raise CheckpointError(
                f"checkpoint is of stage {meta.get('stage')!r}, not {self.stage_name!r}"
            )
        check_base_model(meta["base_model"], self.lm.backbone.name, "checkpoint")
        if meta["rim"] != layout_meta(self.settings):
            raise CheckpointError(
                f"checkpoint has RiM layout {meta['rim']}, but this run's stage settings give "
                f"{layout_meta(self.settings)}"
            )
        self.skipped_nonfinite = meta.get("skipped_nonfinite", 0)
        expected, saved = self._trained_keys(), set(checkpoint["state_dict"])
        if saved != expected:
            raise CheckpointError(
                f"checkpoint weights do not match this run's adapters (missing "
                f"{sorted(expected - saved)[:2]}, unexpected {sorted(saved - expected)[:2]})"
            )
        own = self.state_dict()
        checkpoint["state_dict"].update({k: v for k, v in own.items() if k not in expected})
