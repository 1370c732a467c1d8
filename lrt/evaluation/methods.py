"""Other latent-reasoning methods evaluated in the same harness, each from its own artefact.

A method names the `evaluate.yaml` key that points at what it trained or mined (a STIR
library, a RiM adapter) and a loader, by import path so that evaluation never imports a
method's code until it is used: `loader(sources, base) -> list[Checkpoint]`, each Checkpoint's
`lm` a `LatentLM` whose `generate` also answers in the method's modes (`lrt.modes`,
`Mode.method`). Its rows get the same intervals, paired comparisons and Pareto points.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

METHODS: dict[str, str] = {
    "stir_library": "lrt.baselines.stir.decode:load_libraries",
    "rim": "lrt.baselines.rim.evaluation:load_rim",
}
"""evaluate.yaml key -> `module:function` loading the method's checkpoints."""


def loader(key: str) -> Callable[..., Any]:
    module, _, name = METHODS[key].partition(":")
    return getattr(importlib.import_module(module), name)
