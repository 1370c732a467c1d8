"""A batch of GRPO rollouts: what was sampled, how it was rewarded, what the loss needs."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from lrt.data.records import Record
from lrt.lm.decoding import Generation
from lrt.lm.prefix import Prefix

ANSWER_COLUMNS = (
    "answer_ids",
    "answer_mask",
    "old_answer_logp",
    "ref_answer_logp",
    "drawn_answer_logp",
)
"""The fields of one column per answer token, [B*G, m] (`mask` ends with those columns)."""


@dataclass
class Rollout:
    """One chunk of questions with their sampled latents and answers and the rewards; no grad."""

    prefix: Prefix
    """The B encoded prompts; later passes rerun only the reasoner on `prefix.hidden`."""
    latents: torch.Tensor
    """Z the answers were decoded from, [B*G, K, d] float32, a question's G samples consecutive
    (the reasoner's means when the latents are not sampled)."""
    rewards: torch.Tensor
    correct: torch.Tensor
    advantages: torch.Tensor
    mask: torch.Tensor
    """Which policy tokens count, [B*G, T]: the K latents (when sampled), then the answer
    tokens (when sampled); what the loss type averages over."""
    zero_std: torch.Tensor
    """Groups whose rewards are all equal, [B]: they carry no learning signal."""
    real: torch.Tensor
    """Which samples are real, [B*G]: a rank's padding question (slot -1) carries no loss."""
    generation: Generation
    records: list[Record]
    """One per sample (each question's record repeated G times)."""
    # Sampled latents or answers only:
    noise: torch.Tensor | None = None
    """eps with `Z = mu + sigma * eps`, [B*G, K, d] (None when the latents are not sampled)."""
    old_latent_logp: torch.Tensor | None = None
    """log N(Z; mu, sigma^2) per latent vector under the sampling policy, [B*G, K]."""
    answer_ids: torch.Tensor | None = None
    """The sampled answers' tokens (EOS included when reached), right-padded, [B*G, m]."""
    answer_mask: torch.Tensor | None = None
    old_answer_logp: torch.Tensor | None = None
    """Per answer token log-prob under the sampling policy, [B*G, m]; None with one iteration,
    where the current policy is the sampling one (TRL's shortcut: the ratio is 1)."""
    ref_answer_logp: torch.Tensor | None = None
    """Per answer token log-prob under the reference reasoner (for the k3 KL), or None."""
    drawn_answer_logp: torch.Tensor | None = None
    """Per answer token log-prob the decoder drew it with, [B*G, m]: what the loss's
    recomputation of the sampling policy is checked against (`train/logratio_max`)."""

    def loss_rows(self, mask_truncated: bool) -> torch.Tensor:
        """Which samples' tokens count in the loss, [B*G] bool: the real ones, less, with TRL's
        `mask_truncated_completions`, those whose answer hit the budget without EOS: their
        reward grades a cut-off answer (DAPO's overlong filtering). They stay in the group's
        advantage and in the sample counts of `grpo` and `dr_grpo`, as in TRL."""
        truncated = torch.tensor(self.generation.truncated, device=self.real.device)
        return self.real & ~(truncated & mask_truncated)

    def select_groups(self, questions: torch.Tensor, group_size: int) -> Rollout:
        """The rollout of the `questions` given (indices into its B) with their G samples each.

        Dynamic sampling keeps only some of a round's groups; narrowing the rollout to them
        makes the loss passes (through the base, in answer exploration) cost what the step
        trains on rather than every candidate rolled out. The prefix's cache is narrowed in
        place, so this rollout is spent.
        """
        return self._pick(
            questions, group_size, self.prefix.select(questions.to(self.prefix.mask.device))
        )

    def split(self, size: int | None, group_size: int) -> list[Rollout]:
        """The rollout in consecutive pieces of `size` questions (None: one piece, itself).

        A rollout batch decodes many questions at once, the loss and its backward take a
        micro-batch at a time; each piece holds its own copy of its questions' prompt-cache
        rows (the loss forks it for answer exploration), and this rollout stays whole.
        """
        b = len(self.zero_std)
        if size is None or size >= b:
            return [self]
        device = self.prefix.mask.device
        pieces = []
        for start in range(0, b, size):
            questions = torch.arange(start, min(start + size, b), device=device)
            prefix = self.prefix.rows(questions)
            pieces.append(self._pick(questions, group_size, prefix))
        return pieces

    def _pick(self, questions: torch.Tensor, group_size: int, prefix: Prefix) -> Rollout:
        """The `questions`' samples over `prefix` (already theirs), answer columns past their
        longest answer dropped: a piece's passes through the base cost its own answers' length,
        not the longest answer of the batch it was decoded in."""
        rows = (questions.cpu().unsqueeze(1) * group_size + torch.arange(group_size)).reshape(-1)
        drop = 0
        if self.answer_mask is not None:
            drop = self.answer_mask.shape[1] - int(self.answer_mask[rows].sum(1).max())
        picked: dict[str, object] = {"prefix": prefix}
        for field in fields(self):
            value = getattr(self, field.name)
            if field.name == "prefix":
                continue
            if field.name == "zero_std":
                value = value[questions.to(value.device)]
            elif field.name == "generation":
                value = value.select(rows.tolist())
            elif field.name == "records":
                value = [value[i] for i in rows.tolist()]
            elif value is not None:
                value = value[rows.to(value.device)]
                if field.name in ANSWER_COLUMNS or field.name == "mask":
                    value = value[:, : value.shape[1] - drop]
            picked[field.name] = value
        return Rollout(**picked)  # type: ignore[arg-type]

    def keep_groups(self, keep: torch.Tensor, group_size: int) -> Rollout:
        """The rollout narrowed to the groups kept ([B] bool), so the loss passes cost only
        what the step trains on. A chunk with none kept keeps its first group, masked out (no
        advantage, no loss tokens, not counted): every rank still runs the same passes, which
        DDP and FSDP need."""
        if bool(keep.all()):
            return self
        if bool(keep.any()):
            return self.select_groups(keep.nonzero().flatten(), group_size)
        placeholder = self.select_groups(torch.zeros(1, dtype=torch.long), group_size)
        placeholder.real = torch.zeros_like(placeholder.real)
        placeholder.advantages = torch.zeros_like(placeholder.advantages)
        placeholder.mask = torch.zeros_like(placeholder.mask)
        return placeholder
