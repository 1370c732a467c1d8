"""Stage I: contrastive steering vectors from a question's correct and incorrect rollouts.

For each control point m, the state of the last token of `context + rollout[:end of segment
m]` at each mined layer (the decoder layer's output: the full residual stream, what the online
hook adds to); v = mean over positives - mean over negatives, quality q = mean reward of the
positives - that of the negatives. Per-question results are written atomically as they are
mined, so a killed run resumes without redoing finished questions.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lrt.baselines.stir.rollouts import Rollout
from lrt.baselines.stir.settings import STIRSettings
from lrt.baselines.stir.steering import layer_outputs
from lrt.errors import CheckpointError, ConfigError, one_line
from lrt.lm.decoding import positions
from lrt.lm.latent_lm import LatentLM


@dataclass
class Pair:
    """One (question, control point, layer): the two mean states and the quality of the gap."""

    question: int
    m: int
    layer: int
    quality: float
    r_pos: float
    r_neg: float
    n_pos: int
    n_neg: int
    h_right: torch.Tensor
    h_wrong: torch.Tensor

    def info(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if not isinstance(v, torch.Tensor)}


@torch.no_grad()
def last_states(
    lm: LatentLM, sequences: Sequence[Sequence[int]], layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """Each sequence's last-token state at each layer ([n, d] per layer), one padded forward."""
    width = max(len(s) for s in sequences)
    pad = lm.tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(s)) + list(s) for s in sequences], device=lm.device)
    mask = torch.tensor(
        [[0] * (width - len(s)) + [1] * len(s) for s in sequences], device=lm.device
    )
    decoder = lm.base.get_decoder()
    with layer_outputs(decoder.layers, layers) as captured:
        decoder(input_ids=ids, attention_mask=mask, position_ids=positions(mask, 0))
    return captured


def contrast(
    rollouts: Sequence[Rollout], gold: Rollout | None, m: int, settings: STIRSettings
) -> tuple[list[Rollout], list[Rollout]] | None:
    """(positives, negatives) at control point m among the rollouts with at least m segments:
    the k_neg incorrect ones of lowest reward against the k_pos correct ones of highest (or
    the gold solution, with `pos_source=rollout_or_gold`); None without both."""
    valid = [r for r in rollouts if len(r.ends) >= m]
    wrong = sorted((r for r in valid if not r.correct), key=lambda r: r.reward)[: settings.k_neg]
    if not wrong:
        return None
    right = sorted((r for r in valid if r.correct), key=lambda r: -r.reward)[: settings.k_pos]
    if not right and settings.pos_source == "rollout_or_gold":
        right = [gold] if gold is not None and len(gold.ends) >= m else []
    return (right, wrong) if right else None


def mine_question(
    lm: LatentLM,
    question: int,
    context: Sequence[int],
    rollouts: Sequence[Rollout],
    gold: Rollout | None,
    settings: STIRSettings,
    layers: Sequence[int],
) -> list[Pair]:
    """Every pair of one question with q > 0, over control points 1..M and the mined layers."""
    chosen = []
    for m in range(1, settings.control_points + 1):
        sides = contrast(rollouts, gold, m, settings)
        if sides is None:
            continue
        right, wrong = sides
        quality = sum(r.reward for r in right) / len(right) - sum(r.reward for r in wrong) / len(
            wrong
        )
        if quality > 0:
            chosen.append((m, right, wrong, quality))
    if not chosen:
        return []
    sequences = [
        [*context, *r.ids[: r.ends[m - 1]]] for m, right, wrong, _ in chosen for r in right + wrong
    ]
    states = last_states(lm, sequences, layers)
    pairs, row = [], 0
    for m, right, wrong, quality in chosen:
        n_pos, n_neg = len(right), len(wrong)
        for layer in layers:
            h = states[layer][row : row + n_pos + n_neg].cpu()
            pairs.append(
                Pair(
                    question=question,
                    m=m,
                    layer=layer,
                    quality=quality,
                    r_pos=sum(r.reward for r in right) / n_pos,
                    r_neg=sum(r.reward for r in wrong) / n_neg,
                    n_pos=n_pos,
                    n_neg=n_neg,
                    h_right=h[:n_pos].mean(0),
                    h_wrong=h[n_pos:].mean(0),
                )
            )
        row += n_pos + n_neg
    return pairs


def top_pairs(pairs: Sequence[Pair], keep: int) -> list[Pair]:
    """The `keep` pairs of highest quality over the training set, best first; on ties the
    earlier-mined pair wins (STIR's min-heap keeps the first of equals)."""
    order = sorted(range(len(pairs)), key=lambda i: (-pairs[i].quality, i))
    return [pairs[i] for i in order[:keep]]


class MinedStore:
    """`<run>/stir_library/mined/`: one safetensors file per finished question, written
    atomically, and the mining settings they were mined with (a resume must match them)."""

    def __init__(self, folder: Path, identity: dict[str, Any]) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        record = folder / "mining.json"
        if record.is_file():
            saved = json.loads(record.read_text())
            if saved != identity:
                changed = sorted(k for k in identity if saved.get(k) != identity[k])
                raise ConfigError(
                    f"{record} was mined with other settings ({', '.join(changed) or 'keys'}); "
                    "use a new run_name, or the same settings to resume it"
                )
        else:
            _atomic_write(record, lambda p: p.write_text(json.dumps(identity, indent=2)))

    def path(self, question: int) -> Path:
        return self.folder / f"q{question:05d}.safetensors"

    def done(self, question: int) -> bool:
        return self.path(question).is_file()

    def save(self, question: int, pairs: Sequence[Pair], summary: dict[str, Any]) -> None:
        tensors = {}
        for j, pair in enumerate(pairs):
            tensors[f"right.{j}"] = pair.h_right.contiguous()
            tensors[f"wrong.{j}"] = pair.h_wrong.contiguous()
        meta = {"pairs": json.dumps([p.info() for p in pairs]), "summary": json.dumps(summary)}
        _atomic_write(self.path(question), lambda p: save_file(tensors, str(p), metadata=meta))

    def load(self, question: int) -> tuple[list[Pair], dict[str, Any]]:
        path = self.path(question)
        try:
            tensors = load_file(str(path))
            with safe_open(str(path), "pt") as handle:
                meta = handle.metadata()
            infos = json.loads(meta["pairs"])
            pairs = [
                Pair(**info, h_right=tensors[f"right.{j}"], h_wrong=tensors[f"wrong.{j}"])
                for j, info in enumerate(infos)
            ]
        except Exception as err:  # safetensors, JSON and key errors alike: one damaged file
            raise CheckpointError(
                f"{path} is not a readable mined question: {one_line(err)}"
            ) from err
        return pairs, json.loads(meta["summary"])


def _atomic_write(path: Path, write: Any) -> None:
    """Write through a temporary file in the same folder, then rename: a kill leaves either
    the old file or the new one, never half of one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
