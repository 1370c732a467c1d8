"""The training sequence of RiM and its 4D attention mask: every readout in one pass.

A row is `[prompt][block 1]...[block n][readout 1]...[readout n]`: left-padded prompt tokens,
n blocks of `block_size` learned embeddings, then the text read out after each block (a
solution step in grounding, the final answer in refinement), each right-padded to the batch's
widest readout k. Readout k continues the positions of block k, as if it were decoded right
after it, and its first token is predicted by block k's last position:

- the prompt and the blocks are ordinarily causal (a block sees the question and the blocks
  before it, never a later block);
- readout k sees the question, blocks 1..k and its own earlier tokens, never another readout.

So n readouts cost one forward instead of n, and each is what decoding after block k would see.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Layout:
    """Everything the one-pass forward needs besides the embeddings themselves."""

    allowed: torch.Tensor
    """[B, 1, T, T] bool: query position i may attend to key position j."""
    position_ids: torch.Tensor
    """[B, T] RoPE positions: prompt from its mask, block k and readout k continuing it."""
    readout_ids: torch.Tensor
    """[B, R] the readouts' tokens as they are fed (padding: 0), readout 1 first."""
    predict_at: torch.Tensor
    """[B, R] the sequence position whose output predicts each readout token."""
    target_mask: torch.Tensor
    """[B, R] 1.0 on real readout tokens, 0.0 on padding."""
    target_block: torch.Tensor
    """[B, R] k (1-based) of the block each readout token is read out after."""
    num_blocks: int

    def additive_mask(self, dtype: torch.dtype) -> torch.Tensor:
        """The mask as transformers takes a prepared 4D mask: 0 where allowed, else the
        dtype's minimum (eager adds it to the scores, sdpa passes it as `attn_mask`)."""
        zero = torch.zeros((), dtype=dtype, device=self.allowed.device)
        return torch.where(self.allowed, zero, torch.finfo(dtype).min)


def build_layout(
    prompt_mask: torch.Tensor, block_size: int, readouts: list[list[list[int]]]
) -> Layout:
    """The layout of a batch: `prompt_mask` [B, n] (left padding), and per row the token ids of
    its readouts, one list per block (an empty list: nothing read out after that block).

    The number of blocks is the longest row's count of readouts; a row with fewer still has
    every block in its sequence, and its later blocks are read by nothing of its own.
    """
    b, n = prompt_mask.shape
    device = prompt_mask.device
    k_blocks = max(1, max(len(r) for r in readouts))
    widths = [max((len(r[k]) for r in readouts if k < len(r)), default=0) for k in range(k_blocks)]
    blocks_len = k_blocks * block_size
    total = n + blocks_len + sum(widths)

    # Per column: which block (1..K) or readout (1..K) it belongs to, 0 for neither.
    block_of = torch.zeros(total, dtype=torch.long)
    readout_of = torch.zeros(total, dtype=torch.long)
    offset_in = torch.zeros(total, dtype=torch.long)  # position inside its readout
    for k in range(k_blocks):
        block_of[n + k * block_size : n + (k + 1) * block_size] = k + 1
    start = n + blocks_len
    starts = []
    for k, w in enumerate(widths):
        starts.append(start)
        readout_of[start : start + w] = k + 1
        offset_in[start : start + w] = torch.arange(w)
        start += w

    col = torch.arange(total)
    q, c = col.unsqueeze(1), col.unsqueeze(0)
    in_readout = readout_of > 0
    main = ~in_readout.unsqueeze(1) & ~in_readout.unsqueeze(0) & (c <= q)
    rq, rc = readout_of.unsqueeze(1), readout_of.unsqueeze(0)
    sees_block = (block_of.unsqueeze(0) > 0) & (block_of.unsqueeze(0) <= rq)
    sees_prompt = (col < n).unsqueeze(0)
    own = (rc == rq) & (c <= q)
    readout = in_readout.unsqueeze(1) & (sees_prompt | sees_block | own)
    structure = (main | readout).to(device)

    ids = torch.zeros(b, total - n - blocks_len, dtype=torch.long)
    real = torch.ones(b, total, dtype=torch.bool)
    real[:, :n] = prompt_mask.bool().cpu()
    for i, row in enumerate(readouts):
        for k, w in enumerate(widths):
            tokens = row[k] if k < len(row) else []
            s = starts[k] - n - blocks_len
            ids[i, s : s + len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            real[i, starts[k] + len(tokens) : starts[k] + w] = False
    real = real.to(device)
    # A padded query sees itself, so no softmax row is empty (its output is never used).
    allowed = (structure.unsqueeze(0) & real.unsqueeze(1)) | torch.eye(
        total, dtype=torch.bool, device=device
    )

    prompt_len = prompt_mask.sum(1, keepdim=True).to(device)
    prompt_pos = (prompt_mask.cumsum(1) - 1).clamp(min=0).to(device)
    after = torch.where(
        (block_of > 0).to(device),
        col.to(device) - n,
        (readout_of * block_size + offset_in).to(device),
    )
    position_ids = torch.cat([prompt_pos, prompt_len + after[n:].unsqueeze(0)], dim=1)

    cols = col[n + blocks_len :]
    first = offset_in[cols] == 0
    block_end = n + readout_of[cols] * block_size - 1
    predict_at = torch.where(first, block_end, cols - 1)
    target_mask = real[:, n + blocks_len :].float()
    return Layout(
        allowed=allowed.unsqueeze(1),
        position_ids=position_ids.long(),
        readout_ids=ids.to(device),
        predict_at=predict_at.unsqueeze(0).expand(b, -1).to(device),
        target_mask=target_mask,
        target_block=readout_of[cols].unsqueeze(0).expand(b, -1).to(device),
        num_blocks=k_blocks,
    )
