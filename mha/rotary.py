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

    def frequencies(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """theta_i = base^(-2i/d), shape (d/2,).

        Computed per call rather than stored as a buffer: `module.half()`
        would otherwise round the frequencies to half precision.
        """
        exponents = torch.arange(0, self.head_dim, 2, dtype=dtype, device=device) / self.head_dim
        return self.base**-exponents

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate `x` by `positions`; see the class docstring for shapes."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(
                f"x must have last dimension d={self.head_dim}, got shape {tuple(x.shape)}"
            )
        # Rotate in at least float32: half-precision angles lose whole positions.
        work = torch.promote_types(x.dtype, torch.float32)
        angles = positions.to(work)[..., None] * self.frequencies(work, x.device)  # (s, d/2) | (b, s, d/2)
        if angles.ndim == 3:
            angles = angles[:, None]  # (b, 1, s, d/2): one angle for every head
        cos, sin = angles.cos(), angles.sin()
        pairs = x.to(work).unflatten(-1, (-1, 2))  # (b, n, s, d/2, 2)
        even, odd = pairs.unbind(-1)
        rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
        return rotated.flatten(-2).to(x.dtype)  # (b, n, s, d)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, base={self.base}"
