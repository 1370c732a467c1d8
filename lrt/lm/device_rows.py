"""`Decoder._step` for every row at once, on the device: the decode loop's bookkeeping
without a per-token transfer to the host or per-row Python.

A step's decisions need no text: EOS ends a row (or, inside its thinking, starts the budget
forcing there), the thinking budget starts the forcing, the forcing feeds the close marker
and answer prefix one token per step, a close marker that is one token is matched by id, and
the answer budget ends a row. At paper scale (1024 rows x 2048 answer tokens per rollout)
a host round trip per token and a Python call per row and token are what this spares. A
close marker written in plain text (SmolLM2's) needs the text, so its rows stay on the host
until every row has left its thinking (`Decoder.run`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from lrt.lm.decoding import Decoder


@dataclass
class DeviceRows:
    """The per-row decode state of `Decoder`, as tensors over its `b` rows."""

    tokens: torch.Tensor
    """[b, steps + 1]: each row's tokens from the first (a finished row writes past its end)."""
    drawn: torch.Tensor
    """Log-prob each token was drawn with (NaN for forced tokens), aligned with `tokens`."""
    length: torch.Tensor
    done: torch.Tensor
    truncated: torch.Tensor
    thinking: torch.Tensor
    n_think: torch.Tensor
    n_answer: torch.Tensor
    logp_sum: torch.Tensor
    answer_start: torch.Tensor
    """Index in `tokens` where the answer starts; -1 while the row thinks."""
    queue_left: torch.Tensor
    """Forced tokens still to feed: the last `queue_left` of `forced`."""
    forced: torch.Tensor
    eos: torch.Tensor
    close_id: int
    """-1 when the marker is not one token: then the state moves here only once no row thinks."""
    pad: int
    budget: int
    max_answer: int

    @classmethod
    def start(cls, decoder: Decoder, steps: int, device: torch.device) -> DeviceRows:
        """The device state from `decoder`'s host state (the tokens it has, and room for up to
        `steps` per row)."""
        b, width = decoder.b, steps + 1

        def of(values: list, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.tensor(values, dtype=dtype, device=device)

        tokens = torch.zeros(b, width, dtype=torch.long, device=device)
        drawn = torch.zeros(b, width, device=device)
        for i, (row, logps) in enumerate(zip(decoder.tokens, decoder.sampled_logps, strict=True)):
            tokens[i, : len(row)], drawn[i, : len(logps)] = of(row), of(logps, torch.float)
        starts = [-1 if s is None else s for s in decoder.answer_start]
        return cls(
            tokens=tokens,
            drawn=drawn,
            length=of([len(row) for row in decoder.tokens]),
            done=of(decoder.done, torch.bool),
            truncated=of(decoder.truncated, torch.bool),
            thinking=of(decoder.thinking, torch.bool),
            n_think=of(decoder.n_think),
            n_answer=of(decoder.n_answer),
            logp_sum=decoder.logp_sum.to(device),
            answer_start=of(starts),
            queue_left=of([len(q) for q in decoder.queue]),
            forced=of(decoder.forced_ids or [decoder.lm.tokenizer.pad_token_id]),
            eos=of(sorted(decoder.lm.eos_ids)),
            close_id=-1 if decoder.close_id is None else decoder.close_id,
            pad=decoder.lm.tokenizer.pad_token_id,
            budget=decoder.budget,
            max_answer=decoder.max_answer,
        )

    def step(
        self, rows: torch.Tensor, sampled: torch.Tensor, logp: torch.Tensor, drawn: torch.Tensor
    ) -> torch.Tensor:
        """`Decoder._step` for `rows` given the tokens sampled for them; the ids fed next."""
        active = ~self.done[rows]
        thinking = self.thinking[rows]
        queue = self.queue_left[rows]
        length = self.length[rows]
        is_eos = torch.isin(sampled, self.eos)
        # EOS inside the thinking span: its thinking is over, budget forcing starts here.
        ended = active & (queue == 0) & thinking & is_eos
        start = torch.where(ended, length, self.answer_start[rows])
        thinking = thinking & ~ended
        queue = torch.where(ended, len(self.forced), queue)
        forcing = active & (queue > 0)
        forced = self.forced[(len(self.forced) - queue).clamp(0, len(self.forced) - 1)]
        token = torch.where(forcing, forced, sampled)
        self.tokens[rows, length] = token
        self.drawn[rows, length] = torch.where(forcing, torch.nan, drawn.float())
        length = length + active
        queue = queue - forcing.long()
        free = active & ~forcing  # the sampled token is the row's
        stop = free & is_eos
        think = free & ~stop & thinking
        n_think = self.n_think[rows] + think
        closes = think & (sampled == self.close_id)
        over = think & ~closes & (n_think >= self.budget)
        start = torch.where(closes | over, length, start)
        queue = torch.where(over, len(self.forced), queue)
        answer = free & ~stop & ~thinking
        n_answer = self.n_answer[rows] + answer
        cut = answer & (n_answer >= self.max_answer)
        self.thinking[rows] = thinking & ~(closes | over)
        self.n_think[rows], self.n_answer[rows] = n_think, n_answer
        self.logp_sum[rows] += torch.where(answer, logp.float(), 0.0)
        self.answer_start[rows], self.queue_left[rows], self.length[rows] = start, queue, length
        self.truncated[rows] |= cut
        self.done[rows] = ~active | stop | cut
        return torch.where(active, token, self.pad)

    def finish(self, decoder: Decoder) -> None:
        """Hand the rows' state back to `decoder`'s host lists, in one transfer."""
        width = int(self.length.max())
        tokens, drawn = self.tokens[:, :width].tolist(), self.drawn[:, :width].tolist()
        for i, n in enumerate(self.length.tolist()):
            decoder.tokens[i], decoder.sampled_logps[i] = tokens[i][:n], drawn[i][:n]
        decoder.done, decoder.truncated = self.done.tolist(), self.truncated.tolist()
        decoder.n_think, decoder.n_answer = self.n_think.tolist(), self.n_answer.tolist()
        decoder.logp_sum = self.logp_sum.cpu()
        decoder.answer_start = [None if s < 0 else s for s in self.answer_start.tolist()]
        decoder.thinking = self.thinking.tolist()
