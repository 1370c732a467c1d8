"""Composition of the frozen base and the reasoner: encode, reason, decode with latents.

The sequence the base sees is `[prompt, open marker, Z, close marker, answer]`. The prompt is
encoded once without gradients and its KV cache is reused by everything after it: the SFT
loss, every GRPO sample (the cache is expanded, never recomputed) and generation in all modes.
Prompts are left-padded and positions come from the attention mask, so padding never changes
a row's result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn
from transformers import DynamicCache

from lrt.backbone import Backbone
from lrt.data.collate import pad_answers, pad_prompts
from lrt.data.prompts import question_mask, template_frame
from lrt.errors import ConfigError
from lrt.lm import activation_checkpointing
from lrt.lm.decoding import Decoder, Generation, positions
from lrt.lm.logprobs import token_logprobs
from lrt.lm.prefix import Prefix
from lrt.lm.sampling import RowNoise
from lrt.modes import DECODED
from lrt.reasoner import Reasoner


class _Captured(Exception):
    """Raised by `capture_layer(stop=True)` once the wanted layer has run."""


@contextmanager
def capture_layer(
    decoder: nn.Module, index: int | None, stop: bool = False
) -> Iterator[dict[str, torch.Tensor]]:
    """Keep one entry of transformers' `hidden_states` (see `LatentLM._source_index`) from the
    decoder's forward, by a hook on the module that produces it (None: nothing to capture).
    `stop` ends the forward there by raising `_Captured`, for a pass wanting nothing else."""
    captured: dict[str, torch.Tensor] = {}
    if index is None:
        yield captured
        return
    module = decoder.embed_tokens if index == 0 else decoder.layers[index - 1]

    def hook(_module: nn.Module, _inputs: object, output: object) -> None:
        captured["states"] = output[0] if isinstance(output, tuple) else output
        if stop:
            raise _Captured

    handle = module.register_forward_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


class LatentLM(nn.Module):
    """Frozen base `M` plus trainable reasoner `G_phi`; only the reasoner gets gradients."""

    def __init__(self, backbone: Backbone, reasoner: Reasoner | None = None) -> None:
        super().__init__()
        if not backbone.config.think_open or not backbone.config.think_close:
            raise ConfigError("model.think_open and model.think_close must be non-empty text")
        self.backbone = backbone
        self.base = backbone.model
        self.reasoner = reasoner
        self.tokenizer = backbone.tokenizer
        self.register_buffer("open_ids", self._ids(backbone.config.think_open), persistent=False)
        self.register_buffer("close_ids", self._ids(backbone.config.think_close), persistent=False)
        prefill = backbone.config.nothink_prefill or ""
        self.register_buffer("prefill_ids", self._ids(prefill), persistent=False)
        if backbone.config.activation_checkpointing:
            activation_checkpointing.enable(self.base)
        self.eos_ids = backbone.eos_token_ids

    def _ids(self, text: str) -> torch.Tensor:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        return torch.tensor(ids, dtype=torch.long, device=self.backbone.device)

    def train(self, mode: bool = True) -> LatentLM:
        """Keep the base in eval mode (no dropout) whatever Lightning asks of the module."""
        super().train(mode)
        self.base.eval()
        return self

    @property
    def device(self) -> torch.device:
        return self.backbone.device

    # --- tokenisation ------------------------------------------------------------------------

    def tokenize_prompts(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad_prompts(self.tokenizer, prompts)
        return ids.to(self.device), mask.to(self.device)

    def tokenize_answers(self, answers: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = pad_answers(self.tokenizer, answers)
        return ids.to(self.device), mask.to(self.device)

    # --- the three steps ---------------------------------------------------------------------

    @torch.no_grad()
    def encode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        blind: torch.Tensor | None = None,
    ) -> Prefix:
        """One no-grad pass over the prompt: its KV cache and the reasoner's input states.

        Only the reasoner's source layer is kept (`output_hidden_states` would keep all of
        them), and the LM head runs on the last position alone.

        `blind` (bool per row) withholds the question from the base in those rows: its
        attention mask is 0 on the user's text (`question_mask`; positions stay contiguous),
        while the reasoner still reads the whole prompt, from a second pass that sees it.
        What such a row answers is what Z alone carries (`lrt-blind`, `question_dropout`).
        """
        blind = None if blind is None or not bool(blind.any()) else blind.bool()
        config = self.reasoner.config if self.reasoner is not None else None
        reads_question = config is not None and config.attend == "question"
        needed = blind is not None or reads_question or (config and config.token_residual)
        question = self.question_mask(input_ids, attention_mask) if needed else None
        base_mask = attention_mask
        if blind is not None:  # one question mask serves the base, the reasoner and the residual
            base_mask = attention_mask * (1 - question * blind.unsqueeze(1))
        decoder = self.base.get_decoder()
        cache = DynamicCache(config=self.base.config)
        with capture_layer(decoder, self._source_index()) as captured:
            out = decoder(
                input_ids=input_ids,
                attention_mask=base_mask,
                position_ids=positions(base_mask, 0),
                cache=cache,
                use_cache=True,
            )
        last = out.last_hidden_state
        if self.reasoner is not None:
            hidden = captured.get("states", last)
            if blind is not None:  # the withheld rows' states, from a pass that sees them
                hidden = hidden.clone()
                hidden[blind] = self._source_states(input_ids[blind], attention_mask[blind])
            # Padded positions can hold garbage; zero them so no NaN leaks through attention.
            hidden = torch.where(attention_mask.bool().unsqueeze(-1), hidden, 0.0)
        else:
            hidden = input_ids.new_zeros((input_ids.shape[0], 0))
        n = self.open_ids.numel()
        opened = input_ids.shape[1] >= n and bool((input_ids[:, -n:] == self.open_ids).all())
        logits = self.base.get_output_embeddings()(last[:, -1]).float()
        reason = question if reads_question else None
        if reason is None and blind is not None:
            reason = attention_mask  # the reasoner reads the whole prompt, the base does not
        tokens = None
        if config is not None and config.token_residual:
            tokens = self.question_embeds(input_ids, question)
        return Prefix(cache, base_mask, hidden, logits, opened, reason, tokens)

    def question_embeds(self, input_ids: torch.Tensor, question: torch.Tensor) -> torch.Tensor:
        """The input embeddings of each prompt's first K question tokens (`question`: the
        `question_mask`), [B, K, d], zero past the question's end (`reasoner.token_residual`)."""
        assert self.reasoner is not None
        picked = question.bool()
        ids = input_ids.new_full((input_ids.shape[0], self.reasoner.num_latents), -1)
        for i, row in enumerate(input_ids):
            own = row[picked[i]][: ids.shape[1]]
            ids[i, : own.numel()] = own
        embeds = self.backbone.embed(ids.clamp(min=0))
        return embeds * ids.ge(0).unsqueeze(-1).to(embeds.dtype)

    def _source_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The reasoner's input states of a pass that sees the whole prompt, stopped at the
        source layer (the layers above it would be computed for nothing)."""
        decoder = self.base.get_decoder()
        index = self._source_index()
        with capture_layer(decoder, index, stop=index is not None) as captured:
            try:
                out = decoder(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    position_ids=positions(attention_mask, 0),
                    use_cache=False,
                )
            except _Captured:
                return captured["states"]
        return out.last_hidden_state

    @functools.cached_property
    def _template_frame(self) -> tuple[list[int], list[int]]:
        return template_frame(self.tokenizer, self.backbone.config.system_prompt)

    def question_mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """1 on each prompt's own user text, 0 on its padding and chat template (`reasoner.attend:
        question`): a reasoner reading the template, the same for every question, can satisfy
        its loss without reading the question (DESIGN.md section 5, "Controls")."""
        return question_mask(input_ids, attention_mask, *self._template_frame)

    def _source_index(self) -> int | None:
        """Which of transformers' `hidden_states` the reasoner reads (0: the embeddings, i: the
        output of layer i-1, the last: the final-normed output), or None for the last one."""
        if self.reasoner is None:
            return None
        total = int(self.base.config.num_hidden_layers) + 1
        index = self.reasoner.config.source_layer % total
        return None if index == total - 1 else index

    def reason(self, prefix: Prefix) -> torch.Tensor:
        """Z = G_phi(H, mask): K latent vectors per question, one forward pass."""
        if self.reasoner is None:
            raise ConfigError("mode 'lrt' needs a reasoner; pass reasoner=<folder or checkpoint>")
        latents = self.reasoner(prefix.hidden, prefix.reasoner_mask)
        tokens = prefix.question_tokens
        if tokens is not None:
            latents = self.reasoner.add_tokens(latents, tokens)
        return latents.to(self.base.dtype)

    def _span_pieces(self, mode: str, opened: bool) -> list[str | torch.Tensor]:
        """What `mode` feeds between the prompt and the first decoded token, in order: marker
        ids, or `"latents"` for the K latent vectors.

        The opening marker is left out when the prompt already ends with it (`opened`), and
        `direct` feeds nothing after its own template, except a close marker when the template
        opened a span it cannot skip (DeepSeek-R1-Distill always thinks)."""
        pieces: list[str | torch.Tensor] = []
        if mode != "direct" and not opened:
            pieces.append(self.open_ids)
        if mode == "lrt":
            pieces.append("latents")
        if mode == "nothink" and self.prefill_ids.numel():
            pieces.append(self.prefill_ids)
        if mode in ("lrt", "nothink") or (mode == "direct" and opened):
            pieces.append(self.close_ids)
        return pieces

    def span_positions(self, mode: str, opened: bool = False) -> int:
        """Input positions `mode` puts after the prompt before decoding: the markers it adds and,
        for `lrt`, the K latents (what the prefill of the thinking span costs)."""
        k = self.reasoner.num_latents if self.reasoner is not None else 0
        return sum(k if isinstance(p, str) else p.numel() for p in self._span_pieces(mode, opened))

    def span_embeds(
        self, mode: str, batch_size: int, opened: bool = False, latents: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """Input embeddings of what `mode` feeds after the prompt ([B, n, d]), None if nothing."""
        parts = []
        for piece in self._span_pieces(mode, opened):
            if isinstance(piece, str):
                assert latents is not None, "mode 'lrt' needs latents"
                parts.append(latents)
            else:
                parts.append(self.backbone.embed(piece).unsqueeze(0).expand(batch_size, -1, -1))
        return torch.cat(parts, dim=1) if parts else None

    def thinking_embeds(
        self, latents: torch.Tensor | None, batch_size: int, opened: bool = False
    ) -> torch.Tensor:
        """Input embeddings of `[open marker, Z, close marker]` (or `nothink`'s span without Z);
        without the open marker when the prompt already ends with it (`opened`)."""
        mode = "nothink" if latents is None else "lrt"
        embeds = self.span_embeds(mode, batch_size, opened, latents)
        assert embeds is not None
        return embeds

    def _forward_suffix(
        self,
        prefix: Prefix,
        embeds: torch.Tensor,
        suffix_mask: torch.Tensor,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the base over `embeds` on top of the prefix cache (which it extends).

        `logits_to_keep` > 0 computes the LM head on the last positions only: over a 49k-token
        vocabulary the head costs as much as several layers, and only answer positions need it.
        """
        mask = torch.cat([prefix.mask, suffix_mask], dim=1)
        out = self.base(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions(mask, prefix.mask.shape[1]),
            cache=prefix.cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return out.logits, mask

    # --- SFT loss ----------------------------------------------------------------------------

    def answer_logprobs(
        self,
        prefix: Prefix,
        latents: torch.Tensor | None,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
        temperature: float = 1.0,
    ) -> torch.Tensor:
        """Per-token log p(answer | prompt, markers, Z), shape [B, m] (0 where padded).

        Consumes `prefix.cache` (it is extended in place); use `prefix.fork()` to keep it.
        Gradients flow into `latents` only: the base's weights are frozen. `temperature`
        divides the logits first, giving the log-probs of the distribution answers were
        sampled from (TRL's convention for sampled completions).
        """
        b = answer_ids.shape[0]
        think = self.thinking_embeds(latents, b, prefix.opened)
        embeds = torch.cat([think, self.backbone.embed(answer_ids)], dim=1)
        suffix_mask = torch.cat([answer_mask.new_ones(b, think.shape[1]), answer_mask], dim=1)
        m = answer_ids.shape[1]
        mask = torch.cat([prefix.mask, suffix_mask], dim=1)
        hidden = self.base.get_decoder()(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions(mask, prefix.mask.shape[1]),
            cache=prefix.cache,
            use_cache=True,
        ).last_hidden_state
        # The answer token at suffix position t is predicted at position t-1, the first one by
        # the close marker's last position: the m positions before the final one.
        head = self.base.get_output_embeddings()
        logp = token_logprobs(head, hidden[:, -(m + 1) : -1], answer_ids, temperature)
        return logp * answer_mask

    def sft_loss(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        answer_ids: torch.Tensor,
        answer_mask: torch.Tensor,
        reduction: str = "mean",
        on_latents: Callable[[torch.Tensor], None] | None = None,
        blind: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Negative log-likelihood of the answer tokens given the latents: their mean, or with
        `reduction="sum"` their sum (which training divides by the global token count).
        `on_latents` sees the latents (training logs their spread); `blind` rows are answered
        with the question withheld from the base (`encode`)."""
        prefix = self.encode(input_ids, attention_mask, blind)
        latents = self.reason(prefix)
        if on_latents is not None:
            on_latents(latents)
        logp = self.answer_logprobs(prefix, latents, answer_ids, answer_mask)
        if reduction == "sum":
            return -logp.sum()
        return -logp.sum() / answer_mask.sum().clamp(min=1)

    # --- generation --------------------------------------------------------------------------

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
        repeats: int = 1,
    ) -> Generation:
        """Decode an answer after the thinking span of `mode`, batched with the KV cache.

        `lrt` puts `latents` (or the reasoner's) in the span; `nothink` leaves it empty (but
        for `model.nothink_prefill`); `direct` answers straight after the prompt; `cot`
        lets the model think for up to `budget` tokens and, when the budget is hit, closes the
        span itself and appends `force_answer` (budget forcing). `prefix` is not modified.
        Sampling (`temperature` > 0) draws from `noise`, one uniform per row and step.
        `all_done` turns this process's "every row has stopped" into the decision of every
        data-parallel rank, so that under FSDP all ranks run the same number of forwards.
        `repeats` decodes each prompt that many times, as consecutive rows (GRPO's G answers,
        `latents` given per row): the prompt cache is repeated here, where the span's forward
        soon replaces it, rather than by the caller, who would hold it through the decode.
        """
        if mode not in DECODED:
            raise ConfigError(f"mode={mode!r} is not one of {DECODED}")
        work = prefix.fork(repeats)
        b = work.batch_size
        z = None
        if mode == "lrt":
            z = latents
            if z is None:  # the reasoner runs once per prompt
                z = self.reason(prefix).repeat_interleave(repeats, dim=0)
        embeds = self.span_embeds(mode, b, prefix.opened, z)
        if embeds is None:
            logits, mask = work.last_logits, work.mask
        else:
            out, mask = self._forward_suffix(
                work, embeds, work.mask.new_ones(b, embeds.shape[1]), logits_to_keep=1
            )
            logits = out[:, -1].float()
        decoder = Decoder(self, b, mode == "cot", budget, max_answer_tokens, force_answer)
        if temperature > 0 and noise is None:
            noise = RowNoise(0, torch.arange(b, device=self.device))
        return decoder.run(work.cache, mask, logits, temperature, top_p, noise, all_done)
