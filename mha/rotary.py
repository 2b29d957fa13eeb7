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

__all__ = ["Angles", "RotaryEmbedding"]

Angles = Tensor | tuple[Tensor, Tensor]
"""Rotation angles: complex `cos + i sin` per pair in eager mode, `(cos, sin)` per feature when compiling."""


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
        # (input dtype, device) -> complex angles, rows = positions 0..n-1, grown on demand
        self._tables: dict[tuple[torch.dtype, torch.device], Tensor] = {}
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
        return self.rotate(x, self.angles(positions, x.dtype, x.device))

    def angles(
        self, positions: Tensor, dtype: torch.dtype, device: torch.device, *, end: int | None = None
    ) -> Angles:
        """The rotation angles of `positions`, to rotate several tensors at the same positions.

        In eager mode they are one complex number `cos + i sin` per pair, and
        [`rotate`][mha.RotaryEmbedding.rotate] is one complex multiplication.
        Under `torch.compile` and `torch.export` (whose graphs and ONNX have no
        complex numbers) they are `(cos, sin)` per feature: `cos` repeats each
        pair's cosine twice, and `sin` holds `(-sin, +sin)` for each pair.
        Given `end`, a bound on the positions (every position `< end`), they
        are read from a table kept for the next calls: a decoding step then
        costs a lookup instead of computing the angles again.

        Shape:
            positions: `(s,)` or `(b, s)`; complex angles: `(s, d/2)` or
            `(b, 1, s, d/2)`; cos, sin: `(s, d)` or `(b, 1, s, d)`.
        """
        # Rotate in at least float32: half-precision angles lose whole positions.
        work = torch.promote_types(dtype, torch.float32)
        if torch.compiler.is_compiling():
            angles: Angles = self._per_feature(positions.to(work)[..., None] * self.frequencies(work, device))
        elif end is not None:
            angles = self._table(end, dtype, device)[positions]  # (s, d/2) | (b, s, d/2)
        else:
            angles = self._unit(positions.to(work)[..., None] * self.frequencies(work, device))
        if isinstance(angles, tuple):
            return tuple(a[:, None] if a.ndim == 3 else a for a in angles)  # type: ignore[return-value]
        return angles[:, None] if angles.ndim == 3 else angles  # (b, 1, s, ...): one angle for every head

    def angles_at(self, start: int, s: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Eager [`angles`][mha.RotaryEmbedding.angles] of positions `start, ..., start + s - 1`, from the table."""
        return self._table(start + s, dtype, device)[start : start + s]

    @staticmethod
    def _unit(angles: Tensor) -> Tensor:
        """Pair angles `(..., d/2)` -> the complex numbers `cos + i sin`."""
        return torch.polar(torch.ones_like(angles), angles)

    @staticmethod
    def _per_feature(angles: Tensor) -> tuple[Tensor, Tensor]:
        """Pair angles `(..., d/2)` -> `cos` and signed `sin` per feature `(..., d)`."""
        cos, sin = angles.cos(), angles.sin()
        return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)

    def _table(self, end: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Complex angles of positions `0, 1, ...` for inputs of `dtype`, at least `end` rows `(rows, d/2)`."""
        key = (dtype, device)  # the input's dtype: a decoding step need not promote it first
        table = self._tables.get(key)
        if table is None or table.shape[0] < end:
            rows = max(end, 2 * (0 if table is None else table.shape[0]), 64)  # grow by doubling
            work = torch.promote_types(dtype, torch.float32)
            positions = torch.arange(rows, dtype=work, device=device)[:, None]
            table = self._unit(positions * self.frequencies(work, device))
            self._tables[key] = table
        return table

    def rotate(self, x: Tensor, angles: Angles) -> Tensor:
        """Rotate `x` by angles from [`angles`][mha.RotaryEmbedding.angles].

        Each pair `(e, o)` becomes `(e cos - o sin, o cos + e sin)`: the
        complex number `e + i o` times `cos + i sin`, or, with `(cos, sin)`
        per feature, `x * cos` plus the pair-swapped `(o, e)` times `(-sin, +sin)`.
        """
        if isinstance(angles, tuple):
            cos, sin = angles
            work = x.to(cos.dtype)
            swapped = work[..., self._swap]  # (o, e) for every pair
            return (work * cos + swapped * sin).to(x.dtype)  # (b, n, s, d)
        # Plain tensor methods only, and no conversion that is not needed: a
        # decoding step rotates a few hundred numbers, so the calls are the cost.
        real = torch.float64 if angles.dtype == torch.complex128 else torch.float32
        pairs = x.reshape(x.shape[:-1] + (-1, 2))  # (..., d/2, 2)
        if pairs.dtype != real:
            pairs = pairs.to(real)
        try:
            numbers = torch.view_as_complex(pairs)
        except RuntimeError:  # a view with odd strides or offset
            numbers = torch.view_as_complex(pairs.contiguous())
        out = torch.view_as_real(numbers * angles).flatten(-2)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"
