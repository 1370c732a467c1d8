"""`stage=rim`: the memory-block layout, the LoRA adapters and the two-phase curriculum.

The abstract states the method (fixed memory blocks in one pass; grounding, then refinement);
the numbers below come from third-party digests and are defaults, not facts (RIM.md): each is
a key so that a run can change it and say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lrt.errors import ConfigError
from lrt.training.settings import StageSettings

PHASES = ("both", "grounding", "refinement")
WEIGHTINGS = ("linear", "uniform")


@dataclass
class RiMSettings(StageSettings):
    """Keys of `conf/stage/rim.yaml`; `optim.lr` is grounding's learning rate."""

    name: str = "rim"
    num_blocks: int = 8
    """K: memory blocks after the question at inference and in refinement. Grounding puts one
    block per solution step (a solution longer than K has its extra steps in the K-th readout)."""
    memory_tokens: int = 2
    """M: memory tokens `<m>` per block, between its `<b>` and `</b>`: M + 2 positions a block."""
    markers: list[str] = field(default_factory=lambda: ["<b>", "<m>", "</b>"])
    """Texts of the block's opening, memory and closing tokens. They are never added to the
    vocabulary: each is a learned input embedding, initialised at the mean embedding of its
    text's tokens."""
    lora_r: int = 128
    lora_alpha: float = 128.0
    lora_targets: list[str] = field(default_factory=lambda: ["all-linear"])
    """peft `target_modules`: `["all-linear"]` is every linear layer but the LM head."""
    phase: str = "both"
    """`both`: grounding for `grounding_steps`, then refinement, in one run (the optimiser reset
    between them). `grounding` or `refinement` alone: the curriculum as two runs, the second
    started from the first with `init_from=<grounding run or its adapter>`."""
    grounding_steps: int = 75
    """With `phase=both`: the optimiser steps of grounding; the rest of `max_steps` refine."""
    refinement_lr: float = 1.0e-4
    """Refinement's peak learning rate (grounding's is `optim.lr`), same warm-up and decay."""
    grounding_dropout: float = 0.05
    refinement_dropout: float = 0.1
    """LoRA dropout in each phase (the digests: higher in refinement)."""
    refinement_weighting: str = "linear"
    """Weight of the answer read out after block k: `linear` (alpha_k proportional to k,
    the digests') or `uniform`; normalised to a mean of 1."""

    def __post_init__(self) -> None:
        super().__post_init__()
        checks = [
            ("num_blocks", self.num_blocks >= 1, "must be at least 1"),
            ("memory_tokens", self.memory_tokens >= 0, "must be >= 0"),
            ("markers", len(self.markers) == 3 and all(self.markers),
             "must be three non-empty texts: opening, memory and closing token"),
            ("lora_r", self.lora_r >= 1, "must be at least 1"),
            ("lora_alpha", self.lora_alpha > 0, "must be positive"),
            ("lora_targets", bool(self.lora_targets), "must name at least one module"),
            ("phase", self.phase in PHASES, f"is not one of {PHASES}"),
            ("refinement_lr", self.refinement_lr > 0, "must be positive"),
            ("grounding_dropout", 0 <= self.grounding_dropout < 1, "must be in [0, 1)"),
            ("refinement_dropout", 0 <= self.refinement_dropout < 1, "must be in [0, 1)"),
            ("refinement_weighting", self.refinement_weighting in WEIGHTINGS,
             f"is not one of {WEIGHTINGS}"),
            ("grounding_steps", self.phase != "both" or 0 < self.grounding_steps < self.max_steps,
             f"must be between 0 and stage.max_steps={self.max_steps} with stage.phase=both"),
        ]  # fmt: skip
        for key, ok, why in checks:
            if not ok:
                raise ConfigError(f"stage.{key}={getattr(self, key)!r} {why}")

    @property
    def block_size(self) -> int:
        """Positions per block: `<b>`, M times `<m>`, `</b>`."""
        return self.memory_tokens + 2

    def phase_at(self, step: int) -> str:
        """`grounding` or `refinement`: the phase optimiser step `step` belongs to."""
        if self.phase != "both":
            return self.phase
        return "grounding" if step < self.grounding_steps else "refinement"

    def phase_start(self, step: int) -> int:
        """The first step of the phase `step` is in (where the optimiser was last reset)."""
        return self.grounding_steps if self.phase == "both" and step >= self.grounding_steps else 0
