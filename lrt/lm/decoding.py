"""Token-by-token batched decoding after the thinking span, with budget forcing for `cot`.

Written here rather than taken from `generate()` because the span holds latent embeddings,
the prompt cache is shared across samples, and `cot` needs a per-row forced close marker.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import torch
from transformers import DynamicCache

from lrt.lm.device_rows import DeviceRows
from lrt.lm.sampling import RowNoise, sample_tokens

if TYPE_CHECKING:
    from lrt.lm.latent_lm import LatentLM


SYNC_EVERY = {"cuda": 16}
"""Decode steps between the data-parallel ranks' votes on stopping (`all_done`, an
all-reduce) and, once the rows' state is on the device (`DeviceRows`), between the host's
looks at which rows have stopped, by device type (1 for the others). On a GPU a look waits
for the device; finished rows then decode up to 15 steps more. On a CPU a look costs nothing
and is taken every step."""


@dataclass
class Generation:
    """Decoded continuations, one per row."""

    token_ids: list[list[int]]
    """Every token after the prompt's thinking span (forced tokens of budget forcing included)."""
    texts: list[str]
    """The whole continuation decoded: for `cot`, its thinking too (kept for inspection)."""
    num_generated: list[int]
    """Tokens the model produced itself (thinking + answer), the cost that modes are compared on."""
    mean_logprob: torch.Tensor
    """Mean log-probability of the answer tokens the model chose: the hybrid mode's confidence."""
    truncated: list[bool]
    first_token_at: float = 0.0
    """`time.perf_counter()` when the first token of every row was known (time to first token
    is this minus when the question arrived)."""
    probe_tokens: list[int] | None = None
    """Look-ahead tokens a steered decoder generated and discarded, per row (STIR's probes)."""
    extra_positions: list[int] | None = None
    """Positions a steered decoder processed per row besides the decoded tokens (probes,
    steered re-feeds and unsteered recomputes)."""
    sampled_logprobs: list[list[float]] | None = None
    """Per row, each token's log-prob under the distribution it was drawn from (the logits
    divided by the temperature, before top-p; NaN for forced tokens); set when sampling. GRPO
    compares them with the log-probs its loss recomputes: at the first iteration the two
    must agree, or the policy gradient is taken for a policy that did not sample."""
    answer_texts: list[str] | None = None
    """What is graded: the text after the thinking span's close marker (the forced one and
    `force_answer` included), without the marker: an answer written only in the thinking was
    never given (a row that ends inside its span is budget-forced there, and its answer is what
    follows). Left None by a caller whose rows have no thinking span: then the whole
    `texts`."""
    answer_start: list[int] | None = None
    """Per row, the index in `token_ids` where the answer begins: after the model's own close
    marker, at the forced close marker, or `len(token_ids)` when the span never closed (0 for
    rows without a span)."""

    def __post_init__(self) -> None:
        if self.answer_texts is None:
            self.answer_texts = list(self.texts)
            self.answer_start = [0] * len(self.texts)

    def select(self, rows: list[int]) -> Generation:
        """The continuations of `rows` only, in that order."""

        def pick(values: list | None) -> list | None:
            return None if values is None else [values[i] for i in rows]

        return replace(
            self,
            token_ids=pick(self.token_ids),
            texts=pick(self.texts),
            answer_texts=pick(self.answer_texts),
            answer_start=pick(self.answer_start),
            num_generated=pick(self.num_generated),
            mean_logprob=self.mean_logprob[rows],
            truncated=pick(self.truncated),
            sampled_logprobs=pick(self.sampled_logprobs),
            probe_tokens=pick(self.probe_tokens),
            extra_positions=pick(self.extra_positions),
        )


class Decoder:
    """Token-by-token batched decoding with per-row stopping and budget forcing.

    Written here rather than taken from `generate()` because the span holds latent embeddings,
    the prompt cache is shared across samples, and cot needs a per-row forced close marker; all
    rows still advance one token per step (forced tokens are fed like sampled ones), and rows
    that have finished leave the batch (`prunes`), so a batch's last steps cost what its
    longest answers cost rather than what the whole batch does.
    """

    prunes: ClassVar[bool] = True
    """Drop finished rows from the cache; a subclass that indexes rows itself sets False."""
    host_steps: ClassVar[bool] = False
    """Run `_step` on the host for every row and token; a subclass that follows the tokens
    row by row sets True. Otherwise the rows' state is kept on the device (`DeviceRows`),
    from the first step, or, when a plain-text close marker must be read, once no row is
    thinking."""

    def __init__(
        self,
        lm: LatentLM,
        batch_size: int,
        thinking: bool,
        budget: int,
        max_answer_tokens: int,
        force_answer: str,
    ) -> None:
        self.lm = lm
        self.b = batch_size
        self.thinking = [thinking] * batch_size
        self.answer_start: list[int | None] = [None if thinking else 0] * batch_size
        """Where each row's answer begins in `tokens`; None while it is still thinking."""
        self.budget = budget
        self.max_answer = max_answer_tokens
        close = lm.backbone.config.think_close
        self.close_text = close.strip()
        self.forced_ids = lm._ids(close + force_answer).tolist()
        self.close_id = lm.tokenizer.get_added_vocab().get(self.close_text)
        """The marker's id when the tokenizer holds it as one added token (Qwen3's and
        DeepSeek-R1's `</think>`): that token is how the model closes, matched by id."""
        self._may_close: dict[int, bool] = {}
        """Per token id, whether its text holds the close marker's last character: only such a
        token can complete the marker, so only then is the row's tail decoded and searched."""
        self.tokens: list[list[int]] = [[] for _ in range(batch_size)]
        self.queue: list[list[int]] = [[] for _ in range(batch_size)]
        self.n_think = [0] * batch_size
        self.n_answer = [0] * batch_size
        self.logp_sum = torch.zeros(batch_size)
        self.sampled_logps: list[list[float]] = [[] for _ in range(batch_size)]
        self.done = [False] * batch_size
        self.truncated = [False] * batch_size

    def run(
        self,
        cache: DynamicCache,
        mask: torch.Tensor,
        logits: torch.Tensor,
        temperature: float,
        top_p: float,
        noise: RowNoise | None,
        all_done: Callable[[bool], bool] | None,
    ) -> Generation:
        lm = self.lm
        max_steps = self.max_answer + (
            self.budget + len(self.forced_ids) if any(self.thinking) else 0
        )
        # The mask grows by one column per step: allocated once, read through a growing view.
        start = mask.shape[1]
        full = torch.cat([mask, mask.new_ones(self.b, max_steps)], dim=1)
        live = list(range(self.b))  # the rows that `cache`, `full` and `logits` still hold
        index = torch.arange(self.b, device=full.device)  # the same rows, on the device
        every = SYNC_EVERY.get(full.device.type, 1)
        answering: DeviceRows | None = None
        first_token_at = 0.0
        for t in range(max_steps):
            u = noise.uniform(t)[index] if noise is not None and temperature > 0 else None
            sampled = sample_tokens(logits, temperature, top_p, u)
            # log p of the chosen token without a full log-softmax: its logit minus logsumexp.
            picked = logits.gather(-1, sampled[:, None]).squeeze(-1)
            logp = picked - logits.logsumexp(-1)
            drawn = logp  # and under the distribution it was drawn from:
            if temperature > 0:
                drawn = picked / temperature - (logits / temperature).logsumexp(-1)
            if answering is None and self._on_device():
                answering = DeviceRows.start(self, max_steps, full.device)
            look = (t + 1) % every == 0  # every rank looks at the same steps
            if answering is None:
                # One transfer to the host per step: the tokens and their log-probs together.
                host = torch.stack([sampled.to(logits.dtype), logp, drawn]).cpu()
                tokens, logps, drawns = host[0].long().tolist(), host[1].tolist(), host[2].tolist()
                next_ids = [
                    self._step(i, tokens[j], logps[j], drawns[j]) for j, i in enumerate(live)
                ]
                ids = torch.tensor(next_ids, device=full.device)
                stopped = [self.done[i] for i in live]
            else:
                # The rows' state is kept on the device; the host looks every `every` steps.
                ids = answering.step(index, sampled, logp, drawn)
                stopped = answering.done[index].tolist() if look or t == 0 else None
            if t == 0:
                first_token_at = time.perf_counter()
            if stopped is not None:
                done = all(stopped)  # the rows pruned earlier had stopped
                if all_done is None and done or look and all_done is not None and all_done(done):
                    break
                kept = [j for j, stop in enumerate(stopped) if not stop]
                if self.prunes and kept and len(kept) < len(live):
                    # Finished rows leave the batch: later steps cost what the rows still
                    # decoding cost (a rank with none left keeps its rows for `all_done`).
                    keep = torch.tensor(kept, device=full.device)
                    cache.batch_select_indices(keep)
                    full, index, ids = full[keep], index[keep], ids[keep]
                    live = [live[j] for j in kept]
            mask = full[:, : start + t + 1]
            logits = self._advance(ids.unsqueeze(1), mask, cache)
        if answering is not None:
            answering.finish(self)
        for i in range(self.b):
            if not self.done[i]:
                self.truncated[i] = True
        texts = lm.tokenizer.batch_decode(self.tokens, skip_special_tokens=True)
        starts = [
            len(ids) if start is None else start
            for start, ids in zip(self.answer_start, self.tokens, strict=True)
        ]
        answers = lm.tokenizer.batch_decode(
            [ids[start:] for start, ids in zip(starts, self.tokens, strict=True)],
            skip_special_tokens=True,
        )
        # A forced answer starts at the forced close marker: what follows it is the answer.
        answers = [text.lstrip().removeprefix(self.close_text).lstrip() for text in answers]
        # No answer token (EOS at once, or inside the thinking span): no confidence, not 0.0.
        n_ans = torch.tensor(self.n_answer, dtype=torch.float)
        n_ans = torch.where(n_ans > 0, n_ans, torch.nan)
        return Generation(
            token_ids=self.tokens,
            texts=texts,
            answer_texts=answers,
            answer_start=starts,
            num_generated=[t + a for t, a in zip(self.n_think, self.n_answer, strict=True)],
            mean_logprob=self.logp_sum / n_ans,
            truncated=self.truncated,
            first_token_at=first_token_at,
            sampled_logprobs=self.sampled_logps if temperature > 0 else None,
        )

    def _on_device(self) -> bool:
        """Whether the rest of the decode can keep its state on the device (`host_steps`)."""
        if self.host_steps:
            return False
        return self.close_id is not None or not (any(self.thinking) or any(self.queue))

    def _advance(self, ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        """Feed one token per row on top of `cache` (extended in place); the next logits.

        A method so that a steered decoder (`lrt/baselines/stir/decode.py`) can act at segment
        boundaries while every other step stays this very forward.
        """
        out = self.lm.base(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions(mask, mask.shape[1] - 1),
            cache=cache,
            use_cache=True,
        )
        return out.logits[:, -1].float()

    def _step(self, i: int, sampled: int, logp: float, drawn_logp: float) -> int:
        """Advance row `i`; return the token fed to the model next for that row. `logp` is the
        token's log-prob at temperature 1, `drawn_logp` under the distribution it came from."""
        if self.done[i]:
            return self.lm.tokenizer.pad_token_id
        if self.queue[i]:  # budget forcing: feed the close marker and answer prefix
            token = self.queue[i].pop(0)
            self.tokens[i].append(token)
            self.sampled_logps[i].append(float("nan"))
            return token
        if sampled in self.lm.eos_ids and self.thinking[i]:
            # The model ended inside its thinking span (a model without a thinking mode, whose
            # markers are plain text, never writes the close marker): its thinking is over, so
            # it is budget-forced here, and the answer it then gives is what is graded.
            self._force_answer(i)
            return self._step(i, sampled, logp, drawn_logp)
        self.tokens[i].append(sampled)
        self.sampled_logps[i].append(drawn_logp)
        if sampled in self.lm.eos_ids:
            self.done[i] = True
            return sampled
        if self.thinking[i]:
            self.n_think[i] += 1
            if self.close_text and self._closes(i, sampled):
                self.thinking[i] = False
                self.answer_start[i] = len(self.tokens[i])
            elif self.n_think[i] >= self.budget:
                self._force_answer(i)
        else:
            self.n_answer[i] += 1
            self.logp_sum[i] += logp
            if self.n_answer[i] >= self.max_answer:
                self.done[i] = True
                self.truncated[i] = True
        return sampled

    def _closes(self, i: int, token: int) -> bool:
        """Whether `token` completed the close marker in row `i`'s last 8 tokens. The marker was
        not in the tail before `token` (the row would have left its span), so an occurrence now
        ends inside `token`'s text: a token without the marker's last character cannot close,
        and the tail is decoded only for the few that can. A marker that is one added token is
        matched by its id, with no text decoded."""
        if self.close_id is not None:
            return token == self.close_id
        may = self._may_close.get(token)
        if may is None:
            last = self.close_text[-1]  # a non-ASCII one may span tokens: always look
            may = not last.isascii() or last in self.lm.tokenizer.decode([token])
            self._may_close[token] = may
        return may and self.close_text in self.lm.tokenizer.decode(self.tokens[i][-8:])

    def _force_answer(self, i: int) -> None:
        """End row `i`'s thinking: the close marker and `force_answer` are fed next, and its
        answer starts at the close marker."""
        self.thinking[i] = False
        self.answer_start[i] = len(self.tokens[i])
        self.queue[i] = list(self.forced_ids)


def positions(mask: torch.Tensor, start: int) -> torch.Tensor:
    """Position ids from a left-padded mask, for the columns from `start` on."""
    pos = mask.long().cumsum(-1) - 1
    return pos.clamp(min=0)[:, start:]
