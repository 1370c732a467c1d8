"""`stage=reconstruct`: the question written back through Z alone (ICAE's autoencoding).

The latents-as-prompt solution wins SFT because the base already sees the question; here it
does not (every row is encoded as `lrt-blind` encodes it), and the target is the question's
own text, so the loss falls only as far as Z carries the question. Its reasoner starts SFT
(`init_from`) with a channel already open (DESIGN.md section 5; docs/latents.md).
"""

from __future__ import annotations

from lrt.training.sft import SFTModule


class ReconstructModule(SFTModule):
    """SFT with the question withheld from the base in every row and the question as target;
    validation reports the teacher-forced loss only (there is no answer to grade)."""

    stage_name = "reconstruct"
    withheld = True
    grades_answers = False
