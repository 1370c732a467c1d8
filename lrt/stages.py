"""The training stages `train.py stage=<name>` can run: their settings and what runs them.

A stage is a settings class (the `stage` config group's schema) and a runner, named by import
path so that validating a config never imports a stage's heavy dependencies (TRL, peft). The
reasoner stages share one runner (`lrt.train.train_reasoner`) and name their LightningModule.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lrt.baselines.grpo_cot.settings import GRPOCoTSettings
from lrt.baselines.rim.settings import RiMSettings
from lrt.baselines.stir.settings import STIRSettings
from lrt.errors import ConfigError
from lrt.training.settings import GRPOSettings, ReconstructSettings, SFTSettings


@dataclass(frozen=True)
class Stage:
    settings: type
    runner: str
    """`module:function` taking (TrainConfig, run folder) and returning the run folder."""
    module: str | None = None
    """`module:class` of the LightningModule, for the stages that train a reasoner."""
    target: str | None = None
    """The `data.prompt.target` the stage trains on whatever the data config says (None: the
    data config's); a stage with its own target has no held-out answers to tabulate."""

    def load(self, path: str) -> Any:
        module, _, name = path.partition(":")
        return getattr(importlib.import_module(module), name)

    @property
    def run(self) -> Callable[..., Any]:
        return self.load(self.runner)

    @property
    def lightning_module(self) -> type:
        assert self.module is not None
        return self.load(self.module)


STAGES: dict[str, Stage] = {
    "sft": Stage(SFTSettings, "lrt.train:train_reasoner", "lrt.training.sft:SFTModule"),
    "reconstruct": Stage(
        ReconstructSettings,
        "lrt.train:train_reasoner",
        "lrt.training.reconstruct:ReconstructModule",
        target="question",
    ),
    "grpo": Stage(GRPOSettings, "lrt.train:train_reasoner", "lrt.training.grpo:GRPOModule"),
    "grpo_cot": Stage(GRPOCoTSettings, "lrt.baselines.grpo_cot.trainer:train_grpo_cot"),
    "stir": Stage(STIRSettings, "lrt.baselines.stir.stage:run_stir"),
    "rim": Stage(
        RiMSettings, "lrt.baselines.rim.trainer:train_rim", "lrt.baselines.rim.module:RiMModule"
    ),
}


def get_stage(name: str) -> Stage:
    if name not in STAGES:
        raise ConfigError(f"stage.name={name!r} is not one of {tuple(STAGES)}")
    return STAGES[name]
