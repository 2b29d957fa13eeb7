r"""Rotary position embeddings (RoPE).

RoFormer (Su et al., 2021, https://arxiv.org/abs/2104.09864, eq. 34) rotates
each pair of features $(x_{2i}, x_{2i+1})$ of a query or key at position
$m$ by the angle $m\,\theta_i$, with
$\theta_i = \text{base}^{-2i/d}$. Because rotations compose, the score
between a query at $m$ and a key at $n$ depends on $m - n$
only: attention sees relative positions.

Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from mha import _checks

__all__ = ["RotaryEmbedding"]


class RotaryEmbedding(nn.Module):
    """Rotates queries and keys by their absolute positions.

    Pass it to [`mha.MultiHeadAttention`][mha.MultiHeadAttention] as `positional=`; the module
    then applies it to queries and keys, in the full pass and with a
    [`mha.KVCache`][mha.KVCache] alike.

    Args:
        head_dim: `d`, the per-head width; must be even.
        base: the wavelength base of the paper (10000).

    Shape:
        x: `(b, n, s, d)` for any number of heads `n`;
        positions: `(s,)` or `(b, s)`; output: like `x`.

    Examples:
        >>> import torch
        >>> from mha import RotaryEmbedding
        >>> rope = RotaryEmbedding(2)
        >>> x = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
        >>> rope(x, torch.tensor([1])).flatten()  # rotated by 1 radian
        tensor([0.5403, 0.8415])
    """

    _swap: Tensor  # a buffer, registered in __init__

    def __init__(self, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        head_dim = _checks.positive_int("head_dim", head_dim)
        if head_dim % 2:
            raise ValueError(f"head_dim must be even (features rotate in pairs), got {head_dim}")
        base = _checks.finite_number("base", base)
        if not base > 1:
            raise ValueError(f"base must be a number > 1, got {base!r}")
        self.head_dim = head_dim
        self.base = base
        self._frequencies: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        # (work dtype, device) -> (cos, sin) tables, rows = positions 0..n-1, grown on demand
        self._tables: dict[tuple[torch.dtype, torch.device], tuple[Tensor, Tensor]] = {}
        # [1, 0, 3, 2, ...]: the index that swaps each pair. A buffer follows .to(device);
        # not persistent, so checkpoints stay as they were.
        swap = torch.arange(head_dim).view(-1, 2).flip(-1).flatten()
        self.register_buffer("_swap", swap, persistent=False)

    def frequencies(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """theta_i = base^(-2i/d), shape (d/2,).

        Computed per call rather than stored as a buffer: `module.half()`
        would otherwise round the frequencies to half precision.
        """
        key = (dtype, device)
        if key in self._frequencies and not torch.compiler.is_compiling():
            return self._frequencies[key]  # a decode step would otherwise recompute them twice
        exponents = torch.arange(0, self.head_dim, 2, dtype=dtype, device=device) / self.head_dim
        frequencies = self.base**-exponents
        if not torch.compiler.is_compiling():
            self._frequencies[key] = frequencies
        return frequencies

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate `x` by `positions`; see the class docstring for shapes."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(
                f"x must have last dimension d={self.head_dim}, got shape {tuple(x.shape)}"
            )
        return self.rotate(x, *self.angles(positions, x.dtype, x.device))

    def angles(
        self, positions: Tensor, dtype: torch.dtype, device: torch.device, *, end: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """`(cos, sin)` of the rotation angles, to rotate several tensors at the same positions.

        Both are per feature: `cos` repeats each pair's cosine twice, and `sin`
        holds `(-sin, +sin)` for each pair, ready for [`rotate`][mha.RotaryEmbedding.rotate].
        Given `end`, a bound on the positions (every position `< end`), they
        are read from a table kept for the next calls: a decoding step then
        costs two lookups instead of computing the angles again.

        Shape:
            positions: `(s,)` or `(b, s)`; cos, sin: `(s, d)` or `(b, 1, s, d)`.
        """
        # Rotate in at least float32: half-precision angles lose whole positions.
        work = torch.promote_types(dtype, torch.float32)
        if end is not None and not torch.compiler.is_compiling():
            cos_table, sin_table = self._table(end, work, device)
            cos, sin = cos_table[positions], sin_table[positions]  # (s, d) | (b, s, d)
        else:
            cos, sin = self._per_feature(positions.to(work)[..., None] * self.frequencies(work, device))
        if cos.ndim == 3:
            cos, sin = cos[:, None], sin[:, None]  # (b, 1, s, d): one angle for every head
        return cos, sin

    def angles_at(self, start: int, s: int, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """[`angles`][mha.RotaryEmbedding.angles] for positions `start, ..., start + s - 1`, as views of the table."""
        cos_table, sin_table = self._table(start + s, torch.promote_types(dtype, torch.float32), device)
        return cos_table[start : start + s], sin_table[start : start + s]

    @staticmethod
    def _per_feature(angles: Tensor) -> tuple[Tensor, Tensor]:
        """Pair angles `(..., d/2)` -> `cos` and signed `sin` per feature `(..., d)`."""
        cos, sin = angles.cos(), angles.sin()
        return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)

    def _table(self, end: int, work: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        key = (work, device)
        table = self._tables.get(key)
        if table is None or table[0].shape[0] < end:
            rows = max(end, 2 * (0 if table is None else table[0].shape[0]), 64)  # grow by doubling
            positions = torch.arange(rows, dtype=work, device=device)[:, None]
            table = self._per_feature(positions * self.frequencies(work, device))
            self._tables[key] = table
        return table

    def rotate(self, x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
        """Rotate `x` by angles from [`angles`][mha.RotaryEmbedding.angles].

        Each pair `(e, o)` becomes `(e cos - o sin, o cos + e sin)`: `x * cos`
        plus the pair-swapped `(o, e)` times `(-sin, +sin)`.
        """
        work = x.to(cos.dtype)
        swapped = work[..., self._swap]  # (o, e) for every pair
        return (work * cos + swapped * sin).to(x.dtype)  # (b, n, s, d)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"
