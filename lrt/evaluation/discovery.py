"""What a user points `evaluate.py` at, turned into models to evaluate.

`checkpoints=`/`sweep_dir=` may name a reasoner folder, a Lightning `.ckpt`, a train.py run
folder or any folder above run folders (a Hydra sweep); `adapter=` names LoRA adapters of the
token-space baseline. Everything is found and loaded (and its base checked) before anything is
decoded, so a sweep holding one reasoner for another base fails at once, not hours in.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict

from lrt.adapter import META_NAME, adapter_label, find_adapter, merged_backbone
from lrt.checkpoint import read_checkpoint
from lrt.data.overlap import normalised
from lrt.data.records import Record
from lrt.errors import CheckpointError, ConfigError
from lrt.lm.latent_lm import LatentLM
from lrt.reasoner import is_reasoner_folder, load_reasoner, read_config

log = logging.getLogger("lrt.evaluate")

RUN_REASONERS = ("final", "best", "both")


def as_list(value: Any) -> list[str]:
    """A config value that may be one path or a list of them, as a list of strings."""
    if value is None:
        return []
    if isinstance(value, ListConfig | list | tuple):
        return [str(v) for v in value]
    return [str(value)]


def _is_run(path: Path) -> bool:
    """A train.py run folder; `.hydra` alone marks one that failed before saving anything."""
    return any((path / name).exists() for name in ("reasoner", "checkpoints", ".hydra"))


def _natural(path: Path) -> list[Any]:
    """Sort key so Hydra's job folders come in job order (`2_...` before `10_...`)."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def _run_reasoners(run: Path, pick: str) -> list[Path]:
    """The exported reasoner(s) of a run; its last Lightning checkpoint when none was exported."""
    best, final = run / "reasoner" / "best", run / "reasoner" / "final"
    order = {"final": (final, best), "best": (best, final), "both": (best, final)}[pick]
    found = [p for p in order if is_reasoner_folder(p)]
    if pick != "both":
        found = found[:1]
    last = run / "checkpoints" / "last.ckpt"
    if not found and last.is_file():
        found = [last]
    if not found:
        log.warning("run folder %s holds no reasoner yet; skipped", run)
    return found


def _search(path: Path, pick: str) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix == ".ckpt" else []
    if is_reasoner_folder(path):
        return [path]
    if _is_run(path):
        return _run_reasoners(path, pick)
    children = sorted((c for c in path.iterdir() if not c.name.startswith(".")), key=_natural)
    return [found for child in children for found in _search(child, pick)]


def find_reasoners(path: str | Path, pick: str = "final") -> list[Path]:
    """Every reasoner under `path`, in a stable order.

    `path` may be a reasoner folder (`config.json` + `model.safetensors`), a Lightning `.ckpt`
    file, a run folder of train.py, or any folder above run folders (a Hydra multirun sweep,
    searched recursively; hidden folders such as `.hydra` are skipped). From a run folder,
    `pick='final'` takes `reasoner/final` (the weights at the end of training, what the run's
    own final comparison measured), `'best'` takes `reasoner/best` (best validation accuracy),
    each falling back to the other, and `'both'` takes both. A run that exported neither (it
    was stopped early) contributes `checkpoints/last.ckpt`.
    """
    if pick not in RUN_REASONERS:
        raise ConfigError(f"run_reasoner={pick!r} is not one of {RUN_REASONERS}")
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist")
    if path.is_file() and path.suffix != ".ckpt":
        raise CheckpointError(f"{path} is neither a reasoner folder nor a Lightning .ckpt file")
    found = _search(path, pick)
    if not found:
        raise CheckpointError(f"no reasoner folder, .ckpt file or run folder found under {path}")
    return found


def checkpoint_labels(paths: Sequence[Path]) -> list[str]:
    """Short unique names: `<run>/final` inside a run folder, else the file or folder name."""
    labels = [
        f"{p.parents[1].name}/{p.name}" if p.parent.name in ("reasoner", "checkpoints") else p.name
        for p in paths
    ]
    if len(set(labels)) < len(labels):
        return [str(p) for p in paths]
    return labels


def run_folder(path: Path) -> Path | None:
    """The train.py run folder a found reasoner belongs to (the one holding `.hydra`)."""
    for parent in [path, *path.parents][:4]:
        if (parent / ".hydra").is_dir():
            return parent
    return None


def read_overrides(run: Path) -> dict[str, str]:
    """The command-line overrides of a Hydra run (`.hydra/overrides.yaml`), as key -> value."""
    path = run / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return {}
    pairs = (str(item).lstrip("+~").partition("=") for item in OmegaConf.load(path))
    return {key: value for key, _, value in pairs}


def swept_keys(overrides: Sequence[Mapping[str, str]]) -> list[str]:
    """Keys whose value differs between runs (every key when there is a single run)."""
    keys = list(dict.fromkeys(k for o in overrides for k in o))
    if len(overrides) < 2:
        return keys
    return [k for k in keys if len({o.get(k) for o in overrides}) > 1]


@dataclass
class Checkpoint:
    """A reasoner to evaluate (None: the bare base)."""

    label: str
    path: Path | None
    lm: LatentLM
    sweep_run: Path | None = None
    seen: frozenset[str] = frozenset()
    """Question texts it was trained or mined on (a STIR library's): evaluating it on any
    of them is refused."""


def refuse_seen(checkpoints: Sequence[Checkpoint], tasks: Mapping[str, Sequence[Record]]) -> None:
    """Refuse to evaluate anything on questions it was trained or mined on (`Checkpoint.seen`)."""
    for ckpt in {id(c): c for c in checkpoints}.values():
        seen = {normalised(q) for q in ckpt.seen}
        for task, records in tasks.items():
            overlap = [r.question for r in records if normalised(r.question) in seen]
            if overlap:
                raise ConfigError(
                    f"{ckpt.label} ({ckpt.path}) was built on {len(overlap)} of task {task}'s "
                    f"evaluation questions, e.g. {overlap[0]!r}: evaluate it on held-out questions"
                )


def load_checkpoints(cfg: DictConfig, lm_base: LatentLM) -> list[Checkpoint]:
    """Every reasoner named by `checkpoints` and `sweep_dir`, loaded (and checked) up front.

    Loading them all before decoding anything means a sweep holding one reasoner for another
    base model fails at once with its CheckpointError, not hours into the evaluation.
    """
    sources = [(p, False) for p in as_list(cfg.get("checkpoints"))]
    sources += [(p, True) for p in as_list(cfg.get("sweep_dir"))]
    found = [
        (path, sweep) for src, sweep in sources for path in find_reasoners(src, cfg.run_reasoner)
    ]
    labels = checkpoint_labels([p for p, _ in found])
    backbone = lm_base.backbone
    out = []
    for label, (path, sweep) in zip(labels, found, strict=True):
        reasoner = load_reasoner(path, backbone.name, backbone.hidden_size)
        reasoner = reasoner.to(lm_base.device).eval()
        lm = LatentLM(backbone, reasoner).to(lm_base.device)
        out.append(Checkpoint(label, path, lm, run_folder(path) if sweep else None))
        log.info("reasoner %s: %s (K=%d)", label, path, reasoner.num_latents)
    return out


def load_adapters(cfg: DictConfig, lm_base: LatentLM) -> list[Checkpoint]:
    """Every LoRA adapter named by `adapter`, merged into its own copy of the base, up front
    (an adapter for another base fails before anything is decoded)."""
    out = []
    for source in as_list(cfg.get("adapter")):
        folder = find_adapter(source)
        backbone = merged_backbone(folder, lm_base.backbone)
        label = adapter_label(folder)
        out.append(Checkpoint(label, folder, LatentLM(backbone).to(lm_base.device)))
        log.info("adapter %s: %s (merged into a copy of the base)", label, folder)
    return out


def model_given() -> bool:
    """Whether the command line chose the `model` group or set a key of it (outside Hydra's
    main the caller composed `cfg.model` itself, which counts as given)."""
    if not HydraConfig.initialized():
        return True
    keys = (o.split("=", 1)[0].lstrip("+~") for o in HydraConfig.get().overrides.task)
    return any(k == "model" or k.startswith("model.") for k in keys)


def recorded_base_config(path: Path) -> dict[str, Any] | None:
    """The `model` config a reasoner folder, Lightning checkpoint or adapter recorded."""
    if (path / META_NAME).is_file():
        return json.loads((path / META_NAME).read_text()).get("base_config")
    if path.is_file():
        return read_checkpoint(path)["lrt"]["reasoner_config"].get("base_config")
    return read_config(path).base_config


def take_recorded_model(cfg: DictConfig) -> None:
    """Without `model=` on the command line, evaluate on the base the checkpoints were trained
    for (as they recorded it); a `model=` that contradicts them is refused when they load."""
    if model_given():
        return
    paths = [
        p for src in as_list(cfg.get("checkpoints")) for p in find_reasoners(src, cfg.run_reasoner)
    ]
    paths += [
        p for src in as_list(cfg.get("sweep_dir")) for p in find_reasoners(src, cfg.run_reasoner)
    ]
    paths += [find_adapter(src) for src in as_list(cfg.get("adapter"))]
    recorded = {json.dumps(c, sort_keys=True) for p in paths if (c := recorded_base_config(p))}
    if len(recorded) > 1:
        names = sorted(json.loads(c)["name"] for c in recorded)
        raise ConfigError(
            f"the checkpoints were trained for different base models ({', '.join(names)}); "
            "evaluate them separately or pass model="
        )
    if recorded:
        with open_dict(cfg):
            cfg.model = OmegaConf.create(json.loads(recorded.pop()))
        log.info("base model %s, as the checkpoints recorded it", cfg.model.name)
