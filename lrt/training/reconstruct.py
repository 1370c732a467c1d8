"""`stage=reconstruct`: the question written back through Z alone (ICAE's autoencoding).

The latents-as-prompt solution wins SFT because the base already sees the question; here it
does not (every row is encoded as `lrt-blind` encodes it), and the target is the question's
own text, so the loss falls only as far as Z carries the question. Its reasoner starts SFT
(`init_from`) with a channel already open (DESIGN.md section 5; docs/latents.md).
"""

from __future__ import annotations

import torch

from lrt.training.sft import Batch, SFTModule


class ReconstructModule(SFTModule):
    """SFT with the question withheld from the base in every row and the question as target;
    validation reports the teacher-forced loss only (there is no answer to grade)."""

    stage_name = "reconstruct"

    def blind_rows(self, slots: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(slots, dtype=torch.bool)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        counted = (batch["slot"] >= 0).unsqueeze(1)
        masked = {
            **batch,
            "answer_mask": batch["answer_mask"] * counted,
            "blind": self.blind_rows(batch["slot"]),
        }
        nll = self.answer_nll(masked, training=False)
        self._val_nll += torch.tensor([float(nll), float(masked["answer_mask"].sum())])
