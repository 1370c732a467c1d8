"""GRPO's second validation number: pass@1 of answers sampled as the rollouts sample them.

Greedy validation accuracy is what the final table reports and what `reasoner/best` is chosen
on; the rollouts are rewarded for answers sampled at the training temperature. Logging both on
the same questions shows when the two part (issue 33: greedy accuracy fell while training
went on). The uniforms are keyed by (seed, question) alone, so every validation of a run draws
the same ones and its points differ by the reasoner only.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch

from lrt.grading import grade
from lrt.lm import sampling
from lrt.lm.prefix import Prefix
from lrt.lm.sampling import RowNoise
from lrt.training.policies import VAL_STREAM

if TYPE_CHECKING:
    from lrt.training.grpo import GRPOModule

log = logging.getLogger(__name__)


class SampledValidation:
    """GRPOModule's validation hooks: sampled pass@1 counted beside the base class's greedy
    accuracy, on the same questions and from the same latents, logged as `val/pass@1`."""

    _val_sampled: torch.Tensor
    settings: Any

    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()  # type: ignore[misc]
        self._val_sampled = torch.zeros(2, dtype=torch.float64)

    def validate_sampled(
        self, batch: dict[str, torch.Tensor], prefix: Prefix, latents: torch.Tensor
    ) -> None:
        if self.settings.val_samples and self.settings.samples_answers:
            self._val_sampled += sampled_counts(self, batch, prefix, latents)  # type: ignore[arg-type]

    def on_validation_epoch_end(self: Any) -> None:
        super().on_validation_epoch_end()  # type: ignore[misc]
        correct, total = self.all_sum(self._val_sampled).tolist()
        if total:
            self.log("val/pass@1", correct / total, sync_dist=True)
            if self.trainer.is_global_zero and not self.trainer.sanity_checking:
                log.info(
                    "step %d: validation pass@1 %.1f%% (%d samples at temperature %g)",
                    self.global_step,
                    100 * correct / total,
                    total,
                    self.settings.temperature,
                )


def sampled_counts(
    module: GRPOModule, batch: dict[str, torch.Tensor], prefix: Prefix, latents: torch.Tensor
) -> torch.Tensor:
    """[correct, samples] of `stage.val_samples` answers per counted question of `batch`, at
    the training temperature and top-p, decoded from the batch's greedy-validation latents."""
    s = module.settings
    n = s.val_samples
    slots = batch["slot"]
    rows = slots.clamp(min=0).long().repeat_interleave(n) * n + torch.arange(n).repeat(len(slots))
    gen = module.lm.generate(
        prefix,
        "lrt",
        latents=latents.repeat_interleave(n, dim=0),
        max_answer_tokens=module.answer_tokens,
        temperature=s.temperature,
        top_p=s.top_p,
        noise=RowNoise(sampling.key(module.seed, VAL_STREAM), rows.to(module.lm.device)),
        all_done=module.all_done,
        repeats=n,
    )
    records = module.trainer.datamodule.val_records
    counts = torch.zeros(2, dtype=torch.float64)
    for j, text in enumerate(gen.texts):
        if int(slots[j // n]) >= 0:
            record = records[int(batch["index"][j // n])]
            counts += torch.tensor([grade(module.task, text, record), 1.0])
    return counts
