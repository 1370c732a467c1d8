"""Random numbers as pure functions of where they are used, drawn on the model's device.

A rollout's randomness must not depend on how a batch is cut: the same question at the same
step must get the same noise whether one process decodes the whole batch, two data-parallel
ranks decode half each, or a micro-batch decodes a quarter; and a resumed run must draw what the
uninterrupted run drew. So nothing here has a state to checkpoint. Every draw is a function of
a key path such as `(seed, step, slot)`:

- Gaussian latent noise comes from a device `torch.Generator` seeded per question with
  `key(seed, step, slot)` (one small seeding per question, then one `randn` on the device);
- token sampling draws one uniform per row and decoding step from a counter-based hash
  (splitmix64) of `(stream key, row key, step)`, computed on the device with integer ops, so
  a decoding step needs no generator call per row and no transfer to the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

_MASK64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
_C1 = 0xBF58476D1CE4E5B9
_C2 = 0x94D049BB133111EB


def _mix64(x: int) -> int:
    """splitmix64's finaliser on a Python int (exact 64-bit arithmetic)."""
    x = (x + _GOLDEN) & _MASK64
    x = ((x ^ (x >> 30)) * _C1) & _MASK64
    x = ((x ^ (x >> 27)) * _C2) & _MASK64
    return x ^ (x >> 31)


def key(*path: int) -> int:
    """A 64-bit key for a path of non-negative integers, e.g. `key(seed, step, slot)`."""
    h = 0
    for part in path:
        h = _mix64(h ^ _mix64(int(part) & _MASK64))
    return h


def _signed(x: int) -> int:
    """The int64 with the same bits as the unsigned 64-bit `x` (torch has no uint64 math)."""
    return x - (1 << 64) if x >= 1 << 63 else x


def _shift_right(x: torch.Tensor, n: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (`>>` on int64 is arithmetic)."""
    return (x >> n) & ((1 << (64 - n)) - 1)


def _mix64_tensor(x: torch.Tensor) -> torch.Tensor:
    """`_mix64` on an int64 tensor: the same bits, with wrapping int64 multiplication."""
    x = x + _signed(_GOLDEN)
    x = (x ^ _shift_right(x, 30)) * _signed(_C1)
    x = (x ^ _shift_right(x, 27)) * _signed(_C2)
    return x ^ _shift_right(x, 31)


def uniform(stream: int, rows: torch.Tensor, step: int) -> torch.Tensor:
    """One float32 in [0, 1) per entry of `rows` (int64 row keys) for decoding step `step`."""
    salt = _signed(key(stream, step))
    h = _mix64_tensor(_mix64_tensor(rows.long()) ^ salt)
    return _shift_right(h, 40).to(torch.float32) * 2.0**-24


def gaussian(seed_key: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Standard normal noise of `shape` from a device generator seeded with `seed_key`."""
    generator = torch.Generator(device=device).manual_seed(seed_key & ((1 << 63) - 1))
    return torch.randn(shape, generator=generator, device=device)


LATENT_TAG = 1
"""Key-path tag of per-row latent noise, apart from the answer tokens' uniforms."""


@dataclass
class RowNoise:
    """Where the sampled tokens of one batch of rows get their randomness.

    `stream` identifies the draw (a run's seed and step, or an evaluation's seed) and
    `rows` holds one int64 key per row that does not depend on the row's position in the
    batch (a question's slot in the global batch times G plus the sample number).
    """

    stream: int
    rows: torch.Tensor

    def uniform(self, step: int) -> torch.Tensor:
        return uniform(self.stream, self.rows, step)

    def gaussian(self, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Standard normal noise of `shape` per row, [rows, *shape], keyed by the row alone."""
        return torch.stack(
            [
                gaussian(key(self.stream, LATENT_TAG, row), shape, device)
                for row in self.rows.tolist()
            ]
        )

    def select(self, index: torch.Tensor) -> RowNoise:
        return RowNoise(self.stream, self.rows[index.to(self.rows.device)])


def sample_tokens(
    logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None
) -> torch.Tensor:
    """Greedy when `temperature` is 0, else temperature and nucleus sampling by inverse CDF:
    the token whose cumulative probability first exceeds `u` (one uniform per row)."""
    if temperature <= 0:
        return logits.argmax(-1)
    if u is None:
        raise ValueError("sampling at temperature > 0 needs row noise")
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    order = None
    if top_p < 1.0:
        probs, order = probs.sort(dim=-1, descending=True)
        probs = probs * (probs.cumsum(-1) - probs < top_p)
    cdf = probs.cumsum(-1)
    total = cdf[:, -1]
    # Strictly below the total, so rounding never lands past the last kept token.
    target = torch.minimum(u.to(cdf.device) * total, total.nextafter(torch.zeros_like(total)))
    target = target.unsqueeze(-1)
    index = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)
    return (index if order is None else order.gather(-1, index)).squeeze(-1)
