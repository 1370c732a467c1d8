"""What every training stage shares: one optimiser step on the global mean loss, sharded
validation, checkpoints that hold the reasoner only, and the non-finite guard."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import lightning as L
import numpy as np
import torch

from lrt.checkpoint import check_base_model
from lrt.errors import CheckpointError, NonFiniteLossError
from lrt.grading import grade
from lrt.lm.latent_lm import LatentLM
from lrt.lm.prefix import Prefix
from lrt.reasoner import latent_spread
from lrt.training.optim import configure
from lrt.training.settings import StageSettings

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

log = logging.getLogger(__name__)

BASE_PREFIX = "lm.base."
Chunk = TypeVar("Chunk")


def shard_stage(lm: LatentLM, mesh: DeviceMesh) -> None:
    """Shard the frozen base's decoder layers and the reasoner's blocks over `mesh` (FSDP2).

    Nothing above the base's layers is sharded, so each layer is an FSDP root, and FSDP2 by
    default keeps a root's parameters gathered after its forward (for the backward it expects
    at once): every rank would then hold the whole base, plus its shard, from forward to
    backward. `reshard_after_forward=True` frees each layer's gathered weights after its
    forward (backward gathers them again), so a rank holds its shard of the layers.

    The base's embedding, final norm and LM head stay whole on every rank: they are frozen
    (no gradient to reduce) and used outside the decoder's forward (the thinking span's
    marker embeddings), which FSDP2 would only gather inside a sharded module's forward.
    A function of its own so that a test can measure what this saves on 2 ranks.
    """
    from torch.distributed.fsdp import fully_shard

    assert lm.reasoner is not None
    for layer in lm.base.get_decoder().layers:
        fully_shard(layer, mesh=mesh, reshard_after_forward=True)
    for block in lm.reasoner.shard_units():
        fully_shard(block, mesh=mesh)
    fully_shard(lm.reasoner, mesh=mesh)


class StageModule(L.LightningModule):
    """Base class for the SFT and GRPO modules.

    The frozen base stays registered (so Lightning moves it between devices and applies the
    precision plugin) but its weights are left out of checkpoints: they come from the model
    config, and a checkpoint records which base it belongs to.

    Optimisation is manual in every stage, so that a step can be split into micro-batches
    (`stage.micro_batch_size`) whose gradients accumulate into one optimiser step, and so that
    the loss is normalised by the *global* count of what it averages (answer tokens, samples),
    summed over micro-batches and data-parallel ranks: N ranks and any micro-batch size reach
    the weights one process would reach on the whole batch (DESIGN.md section 6).

    Exact resume: the data order is a function of (seed, step) (see `StepBatchSampler`), and so
    are the global RNG that dropout draws from, reseeded before every batch, and GRPO's noise;
    what is left (weights, optimiser, scheduler, skip count) is in the checkpoint.
    """

    stage_name = "sft"
    """Recorded in checkpoints, so a GRPO run refuses to resume from an SFT checkpoint."""
    eval_mode = "lrt"
    """The mode validation decodes in (RiM's stage validates its own)."""

    def __init__(
        self,
        lm: LatentLM,
        task: str,
        settings: StageSettings,
        seed: int = 0,
        skip_nonfinite: int = 0,
        answer_tokens: int = 32,
    ) -> None:
        """`seed` keys dropout and GRPO's noise; `skip_nonfinite` is `guard.skip_nonfinite`;
        `answer_tokens` is the task's answer budget (`data.max_answer_tokens`), validation's."""
        super().__init__()
        self.automatic_optimization = False
        self.lm = lm
        self.task = task
        self.settings = settings
        self._val_counts = torch.zeros(2, dtype=torch.float64)
        """Correct answers and questions of this rank's validation shard."""
        self._val_spread = torch.zeros(2, dtype=torch.float64)
        """Summed latent spread and number of validation batches of this rank."""
        self._val_blind = torch.zeros(2, dtype=torch.float64)
        """Correct answers and questions of this rank's shard with the question withheld."""
        self.seed = seed
        self.answer_tokens = answer_tokens
        self.skip_nonfinite = skip_nonfinite
        """How many batches with a non-finite loss or gradient may be skipped before stopping."""
        self.skipped_nonfinite = 0
        self._step_loss: torch.Tensor | None = None

    def configure_model(self) -> None:
        """Under FSDP (Lightning's ModelParallelStrategy, i.e. PyTorch's FSDP2) shard the base and
        the reasoner over the data-parallel ranks (`shard_stage`)."""
        mesh = self.device_mesh
        if mesh is None:
            return
        # FSDP loads a checkpoint before `on_load_checkpoint` can put the base's weights back
        # into it: its strict check would count them as missing.
        self.strict_loading = False
        shard_stage(self.lm, mesh["data_parallel"])

    @property
    def reasoner(self) -> torch.nn.Module:
        assert self.lm.reasoner is not None
        return self.lm.reasoner

    def batches_done(self) -> int:
        """Training batches consumed so far (restored on resume); picks the next batch."""
        return self.global_step // self.settings.steps_per_batch

    def total_batches(self) -> int:
        """Training batches in the whole run."""
        return self.trainer.max_steps // self.settings.steps_per_batch

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """What the optimiser updates: the reasoner (GRPO adds a learned sigma)."""
        return list(self.reasoner.parameters())

    def configure_optimizers(self) -> dict[str, Any]:
        return configure(self.trainable_parameters(), self.settings.optim, self.settings.max_steps)

    # --- distributed helpers -------------------------------------------------------------------

    def all_sum(self, value: torch.Tensor | float) -> torch.Tensor:
        """`value` summed over data-parallel ranks (itself in one process)."""
        tensor = torch.as_tensor(value, dtype=torch.float64, device=self.lm.device)
        if self.trainer.world_size > 1:
            tensor = self.trainer.strategy.reduce(tensor.clone(), reduce_op="sum")
        return tensor

    def all_max(self, value: torch.Tensor) -> torch.Tensor:
        """`value`'s elementwise maximum over data-parallel ranks (itself in one process)."""
        tensor = torch.as_tensor(value, dtype=torch.float64, device=self.lm.device)
        if self.trainer.world_size > 1:
            tensor = self.trainer.strategy.reduce(tensor.clone(), reduce_op="max")
        return tensor

    def all_done(self, done: bool) -> bool:
        """Whether every rank is done decoding: under FSDP each forward is a collective, so a
        rank whose rows have all stopped keeps stepping until the others have too."""
        if self.trainer.world_size < 2:
            return done
        return self.trainer.strategy.reduce_boolean_decision(done, all=True)

    # --- one optimiser step ----------------------------------------------------------------

    def optimizer_step_on(
        self,
        chunks: Sequence[Chunk],
        loss_sum: Callable[[Chunk], torch.Tensor],
        count: torch.Tensor,
    ) -> torch.Tensor:
        """Accumulate the gradient of `sum over chunks of loss_sum(chunk) / count` and step.

        `count` is the global number of what the loss averages (all ranks, all chunks), so each
        chunk's sum is divided by it and multiplied by the world size, which the data-parallel
        gradient average divides out again. Returns the global mean loss, for logging.
        """
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        optimizer.zero_grad()
        scale = self.trainer.world_size / count.clamp(min=1).to(torch.float32)
        local = torch.zeros((), dtype=torch.float64, device=self.lm.device)
        for i, chunk in enumerate(chunks):
            with optimizer.toggle_model(sync_grad=i == len(chunks) - 1):
                total = loss_sum(chunk)
                self.manual_backward(total * scale)
            local = local + total.detach().double()
        step_loss = self.all_sum(local) / count.clamp(min=1)
        self.note_step_loss(step_loss)
        if self.settings.max_grad_norm is not None:
            self.clip_gradients(
                optimizer,
                gradient_clip_val=self.settings.max_grad_norm,
                gradient_clip_algorithm="norm",
            )
        optimizer.step()
        scheduler.step()
        return step_loss

    # --- validation --------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val_counts = torch.zeros(2, dtype=torch.float64)
        self._val_spread = torch.zeros(2, dtype=torch.float64)
        self._val_blind = torch.zeros(2, dtype=torch.float64)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Greedy `eval_mode` answers on this rank's shard of the fixed validation slice, graded by
        the task's grader (padding examples, slot -1, are decoded but not counted)."""
        prefix = self.lm.encode(batch["input_ids"], batch["attention_mask"])
        latents = None
        if self.eval_mode == "lrt":
            latents = self.lm.reason(prefix)
            counted = batch["slot"] >= 0
            if int(counted.sum()) > 1:
                self._val_spread += torch.tensor([latent_spread(latents[counted]), 1.0])
        self._val_counts += self.graded(batch, self.greedy(prefix, self.eval_mode, latents))
        if latents is not None and self.settings.val_blind:
            blind = self.lm.encode(
                batch["input_ids"], batch["attention_mask"], torch.ones_like(batch["slot"]) > 0
            )
            self._val_blind += self.graded(batch, self.greedy(blind, "lrt", latents))
        if latents is not None:
            self.validate_sampled(batch, prefix, latents)

    def greedy(self, prefix: Prefix, mode: str, latents: torch.Tensor | None) -> list[str]:
        """Greedy answers of `prefix`'s rows in `mode` at the task's answer budget."""
        gen = self.lm.generate(
            prefix,
            mode,
            latents=latents,
            max_answer_tokens=self.answer_tokens,
            all_done=self.all_done,
        )
        return gen.texts

    def graded(self, batch: dict[str, torch.Tensor], texts: list[str]) -> torch.Tensor:
        """[correct, counted] of `texts`, the answers to `batch`'s validation questions
        (padding examples, slot -1, are decoded but not counted)."""
        records = self.trainer.datamodule.val_records
        counts = torch.zeros(2, dtype=torch.float64)
        for i, slot, text in zip(
            batch["index"].tolist(), batch["slot"].tolist(), texts, strict=True
        ):
            if slot >= 0:
                counts += torch.tensor([grade(self.task, text, records[i]), 1.0])
        return counts

    def validate_sampled(
        self, batch: dict[str, torch.Tensor], prefix: Prefix, latents: torch.Tensor
    ) -> None:
        """Further validation on the batch's latents (GRPO: sampled answers); none here."""

    def on_validation_epoch_end(self) -> None:
        spread, batches = self.all_sum(self._val_spread).tolist()
        if batches:  # the mean over validation batches (each of one rank's questions)
            self.log("val/latent_spread", spread / batches, sync_dist=True)
        blind, asked = self.all_sum(self._val_blind).tolist()
        if asked:
            self.log("val/blind_accuracy", blind / asked, sync_dist=True)
        correct, total = self.all_sum(self._val_counts).tolist()
        if total:
            self.log("val/accuracy", correct / total, prog_bar=True, sync_dist=True)
            # The optimiser steps taken: Lightning's logging step is one less after a step and
            # 0 before the first, so the curves place validations by this instead.
            self.log("val/steps_taken", float(self.global_step))
            if self.trainer.is_global_zero and not self.trainer.sanity_checking:
                log.info(
                    "step %d: validation accuracy %.1f%% (%d of %d questions)",
                    self.global_step,
                    100 * correct / total,
                    correct,
                    total,
                )

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed the global RNG from (seed, step, rank), so a resumed run draws the same dropout."""
        state = np.random.SeedSequence([self.seed, self.global_step, self.global_rank])
        torch.manual_seed(int(state.generate_state(1)[0]))

    def note_step_loss(self, loss: torch.Tensor) -> None:
        """Keep the step's loss for `on_before_optimizer_step`, which stops or skips the step if
        it is not finite.

        The decision waits until after backward so that every data-parallel rank reaches it
        (a rank raising on its own would leave the others waiting in the gradient all-reduce).
        """
        self._step_loss = loss.detach()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Stop on, or skip, a step whose loss or gradients are not finite.

        Runs after backward and before the update, in automatic optimisation and in GRPO's
        manual `optimizer.step()` alike. A skipped step clears the gradients, so AdamW leaves
        every parameter and its moments untouched, yet still counts as a step: the schedule,
        the data order and resuming stay aligned with an uninterrupted run.
        """
        problem = self._nonfinite_problem(optimizer)
        self._step_loss = None
        if not self.trainer.strategy.reduce_boolean_decision(problem is not None, all=False):
            return
        problem = problem or "the loss or a gradient is not finite on another rank"
        step = self.global_step
        if self.skipped_nonfinite >= self.skip_nonfinite:
            raise NonFiniteLossError(
                f"{problem} at step {step}; training stopped and the last checkpoint is kept "
                f"({self.skipped_nonfinite} such batches skipped, "
                f"guard.skip_nonfinite={self.skip_nonfinite})"
            )
        self.skipped_nonfinite += 1
        optimizer.zero_grad(set_to_none=True)
        log.warning(
            "%s at step %d: batch skipped (%d of guard.skip_nonfinite=%d)",
            problem,
            step,
            self.skipped_nonfinite,
            self.skip_nonfinite,
        )

    def _nonfinite_problem(self, optimizer: torch.optim.Optimizer) -> str | None:
        """What is not finite in this step, or None."""
        loss = self._step_loss
        if loss is not None and not torch.isfinite(loss).all():
            return f"loss is {loss.item()}"
        # With a gradient scaler (fp16) overflowing gradients are expected: the scaler skips them.
        if getattr(self.trainer.precision_plugin, "scaler", None) is not None:
            return None
        grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
        grads = [g for g in grads if g is not None]
        if grads and not torch.stack([torch.isfinite(g).all() for g in grads]).all():
            return "a gradient is not finite"
        return None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(BASE_PREFIX)]:
            del state[key]
        checkpoint["lrt"] = {
            "base_model": self.lm.backbone.name,
            "reasoner_config": vars(self.reasoner.config).copy(),
            "skipped_nonfinite": self.skipped_nonfinite,
            "stage": self.stage_name,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        meta = checkpoint.get("lrt")
        if meta is None:
            raise CheckpointError("checkpoint has no 'lrt' metadata: not written by lrt")
        check_base_model(meta["base_model"], self.lm.backbone.name, "checkpoint")
        saved_k = meta["reasoner_config"]["num_latents"]
        if saved_k != self.reasoner.config.num_latents:
            raise CheckpointError(
                f"checkpoint has num_latents={saved_k}, but reasoner.num_latents="
                f"{self.reasoner.config.num_latents}"
            )
        self.skipped_nonfinite = meta.get("skipped_nonfinite", 0)
        if "state_dict" not in checkpoint:  # FSDP took the weights out and loaded them already
            return
        own = self.state_dict()
        expected = {k for k in own if not k.startswith(BASE_PREFIX)}
        saved = set(checkpoint["state_dict"])
        if saved != expected:
            raise CheckpointError(
                f"checkpoint weights do not match this run's reasoner (missing "
                f"{sorted(expected - saved)[:3]}, unexpected {sorted(saved - expected)[:3]})"
            )
        # Put the frozen base back so that loading stays strict for the reasoner's keys.
        checkpoint["state_dict"].update({k: v for k, v in own.items() if k.startswith(BASE_PREFIX)})
