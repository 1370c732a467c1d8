"""The `stir` mode: `cot` decoding steered by a library, with Retrieve-Preview-Commit at each
segment boundary, and the loader `evaluate.py stir_library=<folder>` uses.

Decoding is `cot`'s own batched loop (`lrt.lm.decoding.Decoder`); a steered decoder acts only at
the step that feeds a segment's last token d (the last prefill position of STIR's next call):
- the ordinary unsteered forward of d gives the query states and the null continuation;
- Retrieve, then Preview: each candidate (and a null probe) re-feeds d from a copy of the row's
  cache, steered at scale 1, and decodes `probe_tokens` greedy tokens, discarded and counted;
- Commit: the winner re-feeds d steered at scale k x score, and its K/V replace the row's.
STIR re-prefills every call unsteered, so the impulse lasts one segment: when a steered
segment ends (or budget forcing starts), the row's K/V from d on are recomputed unsteered.
Null segments keep the cache as it is, so with no entry to retrieve, `stir` is `cot`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from transformers import DynamicCache

from lrt.backbone import Backbone
from lrt.baselines.stir.library import FOLDER, Library
from lrt.baselines.stir.rollouts import ends_segment
from lrt.baselines.stir.settings import OnlineSettings
from lrt.baselines.stir.steering import commit, inject, layer_outputs, retrieve
from lrt.evaluation.discovery import Checkpoint
from lrt.lm.decoding import Decoder, Generation, positions
from lrt.lm.latent_lm import LatentLM
from lrt.lm.prefix import Prefix
from lrt.lm.sampling import RowNoise


def row_cache(cache: DynamicCache, rows: Sequence[int], config: Any) -> DynamicCache:
    """A new cache holding copies of `rows` of `cache` (a row may repeat)."""
    out = DynamicCache(config=config)
    index = torch.tensor(list(rows), device=cache.layers[0].keys.device)
    for i, layer in enumerate(cache.layers):
        out.update(layer.keys[index], layer.values[index], i)
    return out


class SteeredLM(LatentLM):
    """The frozen base with a STIR library: `generate` answers in `stir` too."""

    def __init__(self, backbone: Backbone, library: Library) -> None:
        super().__init__(backbone)
        self.library = library.to(self.device)
        self.online = OnlineSettings(**library.meta.get("online", {}))
        self.delimiter = str(library.meta.get("delimiter", "\n\n"))
        self.control_points = int(library.meta.get("control_points", 8))

    @torch.no_grad()
    def generate(
        self,
        prefix: Prefix,
        mode: str,
        latents: torch.Tensor | None = None,
        max_answer_tokens: int = 32,
        budget: int = 256,
        force_answer: str = "The answer is",
        temperature: float = 0.0,
        top_p: float = 1.0,
        noise: RowNoise | None = None,
        all_done: Callable[[bool], bool] | None = None,
    ) -> Generation:
        """`LatentLM.generate`, and for `stir` its `cot` path with the steered decoder (the
        probe tokens and extra positions of each row come back in the Generation)."""
        if mode != "stir":
            return super().generate(
                prefix, mode, latents, max_answer_tokens, budget, force_answer, temperature,
                top_p, noise, all_done,
            )  # fmt: skip
        b = prefix.batch_size
        work = prefix.fork()
        embeds = self.span_embeds(mode, b, prefix.opened)
        if embeds is None:
            logits, mask = prefix.last_logits, prefix.mask
        else:
            ones = prefix.mask.new_ones(b, embeds.shape[1])
            out, mask = self._forward_suffix(work, embeds, ones, logits_to_keep=1)
            logits = out[:, -1].float()
        decoder = SteeredDecoder(self, b, budget, max_answer_tokens, force_answer)
        if temperature > 0 and noise is None:
            noise = RowNoise(0, torch.arange(b, device=self.device))
        gen = decoder.run(work.cache, mask, logits, temperature, top_p, noise, all_done)
        return replace(gen, probe_tokens=decoder.probe_tokens, extra_positions=decoder.extra)


class SteeredDecoder(Decoder):
    """`cot`'s decoder with STIR's Retrieve-Preview-Commit at segment boundaries."""

    prunes = False  # its per-row state (segments, probes, recomputes) indexes the whole batch
    host_steps = True  # and follows every row's tokens on the host, the forced answer's too

    def __init__(
        self, lm: SteeredLM, batch_size: int, budget: int, max_answer: int, force_answer: str
    ) -> None:
        super().__init__(lm, batch_size, True, budget, max_answer, force_answer)
        self.steer_lm = lm
        self.layers = lm.base.get_decoder().layers
        self.library_layers = sorted(set(lm.library.layer.tolist()))
        self.stocked = set(lm.library.control_point.tolist())
        self.seg_start = [0] * batch_size
        self.segments = [0] * batch_size
        self.forced = [False] * batch_size
        self.boundary = [False] * batch_size
        self.ended = [False] * batch_size
        self.steered: list[tuple[DynamicCache, int] | None] = [None] * batch_size
        """Per row: (its cache before the steered token, that token's index) until recomputed."""
        self.probe_tokens = [0] * batch_size
        self.extra = [0] * batch_size

    def _step(self, i: int, sampled: int, logp: float, drawn_logp: float) -> int:
        """`Decoder._step`, noting where segments end: on a token the model chose itself, while
        decoding goes on unforced, up to M segments (`rollouts.sample_rollouts` cuts the same)."""
        was_forced = bool(self.queue[i]) or self.forced[i]
        token = super()._step(i, sampled, logp, drawn_logp)
        if self.queue[i] and not self.forced[i]:
            self.forced[i] = self.ended[i] = True
        if self.done[i] or was_forced or self.forced[i]:
            return token
        if self.segments[i] < self.steer_lm.control_points and ends_segment(
            self.lm.tokenizer, self.tokens[i][self.seg_start[i] :], self.steer_lm.delimiter
        ):
            self.segments[i] += 1
            self.seg_start[i] = len(self.tokens[i])
            self.boundary[i] = self.ended[i] = True
        return token

    def _advance(self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        for i in range(self.b):
            if self.ended[i] and self.steered[i] is not None:
                self._recompute(i, mask, cache)
        deciding = [
            i
            for i in range(self.b)
            if self.boundary[i]
            and self.segments[i] < self.steer_lm.control_points
            and self.segments[i] in self.stocked
        ]
        self.boundary = [False] * self.b
        self.ended = [False] * self.b
        if not deciding:
            return super()._advance(ids, mask, cache)
        before = {i: row_cache(cache, [i], self.lm.base.config) for i in deciding}
        with layer_outputs(self.layers, self.library_layers) as q:
            logits = super()._advance(ids, mask, cache)
        online: OnlineSettings = self.steer_lm.online
        for i in deciding:
            query = {layer: q[layer][i] for layer in self.library_layers}
            found = retrieve(self.steer_lm.library, query, self.segments[i], online)
            if found is None or not found.candidates:
                continue
            gains = None
            if online.probe_tokens > 0:
                gains = self._preview(i, before[i], ids[i], mask, found.candidates)
            row, scale = commit(found, gains, online)
            if row is None:
                continue
            logits[i] = self._commit(i, before[i], ids[i], mask, row, scale, cache)
            self.steered[i] = (before[i], len(self.tokens[i]) - 1)
        return logits

    def _forward(
        self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache, deltas: dict
    ) -> torch.Tensor:
        """One token per row on `cache`, each row's delta added at its layer (the impulse)."""
        with inject(self.layers, deltas):
            return Decoder._advance(self, ids, mask, cache)

    def _deltas(self, rows: Sequence[int | None], scales: Sequence[float]) -> dict:
        """Per library layer, a [len(rows), d] delta: `scale x payload` of each row's entry."""
        library = self.steer_lm.library
        width = library.payloads.shape[1]
        deltas: dict[int, torch.Tensor] = {}
        for j, (row, scale) in enumerate(zip(rows, scales, strict=True)):
            if row is None:
                continue
            layer = int(library.layer[row])
            if layer not in deltas:
                deltas[layer] = library.payloads.new_zeros(len(rows), width)
            deltas[layer][j] = scale * library.payloads[row]
        return deltas

    def _preview(
        self,
        i: int,
        before: DynamicCache,
        token: torch.Tensor,
        mask: torch.Tensor,
        candidates: Sequence[int],
    ) -> list[float]:
        """Each candidate's probe confidence minus the null probe's: the mean log-prob of up
        to `probe_tokens` greedy tokens (stopping at the delimiter or EOS), d re-fed steered
        at scale 1 for a candidate and unsteered for the null probe (row 0)."""
        rows: list[int | None] = [None, *candidates]
        n = len(rows)
        cache = row_cache(before, [0] * n, self.lm.base.config)
        row_mask = mask[i : i + 1].expand(n, -1)
        ids = token.view(1, 1).expand(n, 1)
        logits = self._forward(ids, row_mask, cache, self._deltas(rows, [1.0] * n))
        self.extra[i] += n
        probes: list[list[int]] = [[] for _ in range(n)]
        logps: list[list[float]] = [[] for _ in range(n)]
        active = [True] * n
        limit = self.steer_lm.online.probe_tokens
        for step in range(limit):
            chosen = logits.argmax(-1)
            logp = logits.log_softmax(-1).gather(-1, chosen[:, None]).squeeze(-1)
            for j in range(n):
                if not active[j]:
                    continue
                probes[j].append(int(chosen[j]))
                logps[j].append(float(logp[j]))
                text_done = ends_segment(self.lm.tokenizer, probes[j], self.steer_lm.delimiter)
                if text_done or int(chosen[j]) in self.lm.eos_ids:
                    active[j] = False
            if step == limit - 1 or not any(active):
                break
            row_mask = torch.cat([row_mask, row_mask.new_ones(n, 1)], dim=1)
            logits = Decoder._advance(self, chosen[:, None], row_mask, cache)
            self.extra[i] += n
        self.probe_tokens[i] += sum(len(p) for p in probes)
        conf = [sum(lp) / len(lp) if lp else 0.0 for lp in logps]
        return [c - conf[0] for c in conf[1:]]

    def _commit(
        self,
        i: int,
        before: DynamicCache,
        token: torch.Tensor,
        mask: torch.Tensor,
        row: int,
        scale: float,
        cache: DynamicCache,
    ) -> torch.Tensor:
        """Re-feed row i's token steered by `scale x payload`; its K/V replace the row's."""
        sub = row_cache(before, [0], self.lm.base.config)
        logits = self._forward(token.view(1, 1), mask[i : i + 1], sub, self._deltas([row], [scale]))
        for layer, steered in zip(cache.layers, sub.layers, strict=True):
            layer.keys[i, :, -1] = steered.keys[0, :, -1]
            layer.values[i, :, -1] = steered.values[0, :, -1]
        self.extra[i] += 1
        return logits[0]

    def _recompute(self, i: int, mask: torch.Tensor, cache: DynamicCache) -> None:
        """Row i's K/V from its steered token to the one before the pending token, recomputed
        unsteered: STIR's next call re-prefills the whole prefix without the impulse."""
        state = self.steered[i]
        assert state is not None
        before, first = state
        self.steered[i] = None
        fed = self.tokens[i][first:-1]
        start = mask.shape[1] - 1 - len(fed)
        sub = row_cache(before, [0], self.lm.base.config)
        row_mask = mask[i : i + 1, : start + len(fed)]
        self.lm.base(
            input_ids=torch.tensor([fed], device=mask.device),
            attention_mask=row_mask,
            position_ids=positions(row_mask, start),
            cache=sub,
            use_cache=True,
            logits_to_keep=1,
        )
        for layer, clean in zip(cache.layers, sub.layers, strict=True):
            layer.keys[i, :, start:] = clean.keys[0, :, start:]
            layer.values[i, :, start:] = clean.values[0, :, start:]
        self.extra[i] += len(fed)


def load_libraries(sources: Sequence[str], base: LatentLM) -> list[Checkpoint]:
    """`evaluate.py stir_library=<folder or [folders]>`: each library (or stage=stir run
    folder) on the evaluation's base, checked, as a checkpoint answering in `stir`; its mined
    questions are `seen`, so evaluating it on any of them is refused."""
    found = []
    for source in sources:
        path = Path(source)
        library = Library.load(path, base.backbone.name, base.backbone.hidden_size)
        run = path.parent if path.name == FOLDER else path
        questions = frozenset(q["question"] for q in library.meta.get("questions", []))
        lm = SteeredLM(base.backbone, library)
        found.append(Checkpoint(f"stir:{run.name}", path, lm, seen=questions))
    return found
