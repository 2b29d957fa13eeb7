r"""Rotary position embeddings (RoPE).

RoFormer (Su et al., 2021, https://arxiv.org/abs/2104.09864, eq. 34) rotates
each pair of features $(x_{2i}, x_{2i+1})$ of a query or key at position
$m$ by the angle $m\,\theta_i$, with
$\theta_i = \text{base}^{-2i/d}$. Because rotations compose, the score
between a query at $m$ and a key at $n$ depends on $m - n$
only: attention sees relative positions.

Checkpoints differ in which features form a pair (`interleaved`), how many
features rotate (`rotary_dim`) and how the frequencies stretch for long
contexts (`scaling`, see [`mha.rope_scaling`][mha.rope_scaling]).

Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from typing import cast

import torch
from torch import Tensor, nn

from mha import _checks
from mha.rope_scaling import RopeScaling, parse_scaling

__all__ = ["Angles", "RotaryEmbedding"]

Angles = Tensor | tuple[Tensor, Tensor]
"""Rotation angles: complex `cos + i sin` per pair in eager mode, `(cos, sin)` per rotated feature when compiling."""


class RotaryEmbedding(nn.Module):
    """Rotates queries and keys by their absolute positions.

    Pass it to [`mha.MultiHeadAttention`][mha.MultiHeadAttention] as `positional=`; the module
    then applies it to queries and keys, in the full pass and with a
    [`mha.KVCache`][mha.KVCache] alike.

    Which features form a rotating pair depends on the checkpoint, though the
    rotation is the same:

    * `interleaved=True` (the default, as in earlier versions of mha): pairs
      `(x[2i], x[2i+1])`, the RoFormer paper's form. GPT-J, RoFormer and
      Meta's original Llama weights (`consolidated.pth`) use it.
    * `interleaved=False`: pairs `(x[i], x[i + r/2])`, Transformers'
      `rotate_half`. Checkpoints in the Hugging Face format use it: Llama
      (converted with permuted query/key rows), Mistral, Qwen 2/3, Gemma,
      Phi-3, gpt-oss, GPT-NeoX.

    The two are the same rotation of permuted features: converting a
    checkpoint from one to the other means permuting the query and key rows
    of each head, or choosing the layout here.

    Args:
        head_dim: `d`, the per-head width.
        base: the wavelength base of the paper (10000; `rope_theta` in Transformers' configs).
        interleaved: pairs of neighbours (`True`) or of the two halves (`False`); see above.
        rotary_dim: `r`, how many leading features rotate (even, at most `d`);
            the other `d - r` pass through unchanged (partial rotary: GPT-J's
            `rotary_dim`, Transformers' `partial_rotary_factor · d`).
            Defaults to `d`, which must then be even.
        scaling: frequencies for long contexts, as Transformers' `rope_scaling`
            / `rope_parameters` dict: `{"rope_type": "linear" | "dynamic" |
            "llama3" | "yarn", ...}` with that type's keys (see
            [`mha.rope_scaling`][mha.rope_scaling]). `"dynamic"` also needs
            `original_max_position_embeddings` (Transformers reads it from
            `config.max_position_embeddings`). Keys `rope_theta` and
            `partial_rotary_factor` may be present if they agree with `base`
            and `rotary_dim`.

    Attributes:
        attention_factor: what cos and sin are multiplied by; 1 except for
            `"yarn"` (by default `0.1 ln(factor) + 1`), which so scales every
            score by its square.

    Dynamic scaling keeps state, as Transformers' rotary embedding does: each
    call's positions (their maximum + 1, the sequence length) grow the base
    when they exceed the longest length seen so far, and a call shorter than
    `original_max_position_embeddings` resets it. So with a KV cache, as in
    Transformers, the cached keys keep the rotation of the step that wrote
    them, while later steps rotate with a grown base. It cannot run under
    `torch.compile` or `torch.export` (raises).

    Shape:
        x: `(b, n_h, s, d)`, or `(b, n_kv, s, d)` for keys: any number of heads;
        positions: `(s,)` or `(b, s)`; output: like `x`.

    Raises:
        ValueError: a size out of range, or a `scaling` with an unknown
            `rope_type`, a missing or unknown key or a bad value (the message
            names it).
        TypeError: an argument of the wrong type.

    Examples:
        >>> import torch
        >>> from mha import RotaryEmbedding
        >>> rope = RotaryEmbedding(2)
        >>> x = torch.tensor([1.0, 0.0]).view(1, 1, 1, 2)
        >>> rope(x, torch.tensor([1])).flatten()  # rotated by 1 radian
        tensor([0.5403, 0.8415])
        >>> halves = RotaryEmbedding(4, interleaved=False)  # pairs (x0, x2) and (x1, x3)
        >>> halves(torch.tensor([1.0, 0.0, 0.0, 0.0]).view(1, 1, 1, 4), torch.tensor([1])).flatten()
        tensor([0.5403, 0.0000, 0.8415, 0.0000])
        >>> llama31 = RotaryEmbedding(128, 500000.0, interleaved=False, scaling={
        ...     "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
        ...     "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
        ...
        >>> yarn = RotaryEmbedding(64, 150000.0, interleaved=False, scaling={
        ...     "rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
        ...     "original_max_position_embeddings": 4096, "truncate": False})
        ...
        >>> round(yarn.attention_factor, 4)  # cos and sin are scaled by 0.1 ln(32) + 1
        1.3466
    """

    _swap: Tensor  # a buffer, registered in __init__

    def __init__(
        self,
        head_dim: int,
        base: float = 10000.0,
        *,
        interleaved: bool = True,
        rotary_dim: int | None = None,
        scaling: dict | None = None,
    ) -> None:
        super().__init__()
        head_dim = _checks.positive_int("head_dim", head_dim)
        if rotary_dim is None:
            if head_dim % 2:
                raise ValueError(f"head_dim must be even (features rotate in pairs), got {head_dim}")
            rotary_dim = head_dim
        rotary_dim = _checks.positive_int("rotary_dim", rotary_dim)
        if rotary_dim % 2 or rotary_dim > head_dim:
            raise ValueError(
                f"rotary_dim must be even (features rotate in pairs) and at most head_dim={head_dim}, got {rotary_dim}"
            )
        base = _checks.finite_number("base", base)
        if not base > 1:
            raise ValueError(f"base must be a number > 1, got {base!r}")
        self.head_dim = head_dim
        self.base = float(base)
        self.interleaved = _checks.flag("interleaved", interleaved)
        self.rotary_dim = rotary_dim
        self._scaling: RopeScaling | None = parse_scaling(scaling, base=base, head_dim=head_dim, rotary_dim=rotary_dim)
        self.scaling = None if scaling is None else dict(scaling)
        self.attention_factor = 1.0 if self._scaling is None else self._scaling.attention_factor()
        dynamic = self._scaling is not None and self._scaling.rope_type == "dynamic"
        # The sequence length dynamic scaling computed its frequencies for; None for the other types.
        self._dynamic_length: int | None = self._scaling.original_length if dynamic else None  # type: ignore[union-attr]
        self._frequencies: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        # (input dtype, device) -> complex angles, rows = positions 0..n-1, grown on demand
        self._tables: dict[tuple[torch.dtype, torch.device], Tensor] = {}
        # The index that puts each feature's partner in its place: [1, 0, 3, 2, ...] for
        # neighbours, [r/2, ..., r-1, 0, ..., r/2-1] for halves. A buffer follows .to(device);
        # not persistent, so checkpoints stay as they were.
        if interleaved:
            swap = torch.arange(rotary_dim).view(-1, 2).flip(-1).flatten()
        else:
            swap = torch.arange(rotary_dim).roll(rotary_dim // 2)
        self.register_buffer("_swap", swap, persistent=False)

    @property
    def dynamic(self) -> bool:
        """Whether the frequencies depend on the sequence lengths seen (`scaling` of rope_type `"dynamic"`)."""
        return self._dynamic_length is not None

    def frequencies(self, dtype: torch.dtype, device: torch.device) -> Tensor:
        """theta_i = base^(-2i/r), shape (r/2,), scaled as `scaling` says.

        Computed per call rather than stored as a buffer: `module.half()`
        would otherwise round the frequencies to half precision.
        """
        key = (dtype, device)
        # is_compiling() first: Dynamo then never reads the dict, so eager calls that fill
        # it between compiled ones cannot fail a guard and recompile.
        if not torch.compiler.is_compiling() and key in self._frequencies:
            return self._frequencies[key]  # a decode step would otherwise recompute them twice
        if self._scaling is None:
            exponents = torch.arange(0, self.rotary_dim, 2, dtype=dtype, device=device) / self.rotary_dim
            frequencies = 1.0 / (self.base**exponents)
        else:
            frequencies = self._scaling.inverse_frequencies(
                self.base, self.rotary_dim, dtype, device, seq_len=self._dynamic_length
            )
        if not torch.compiler.is_compiling():
            self._frequencies[key] = frequencies
        return frequencies

    def _see(self, end: int) -> None:
        """Dynamic scaling: positions up to `end - 1` are being rotated; grow or reset the base as Transformers does."""
        length, original = cast(int, self._dynamic_length), cast(RopeScaling, self._scaling).original_length
        if end > length:
            self._dynamic_length = end
        elif end < original < length:
            self._dynamic_length = original
        else:
            return
        self._frequencies.clear()
        self._tables.clear()

    def _see_positions(self, positions: Tensor) -> None:
        if torch.compiler.is_compiling():
            raise ValueError(
                "RotaryEmbedding with scaling rope_type 'dynamic' changes its frequencies with the longest "
                "sequence seen, which torch.compile and torch.export cannot trace; use another rope_type, or eager mode"
            )
        if positions.numel():
            self._see(int(positions.max()) + 1)

    def forward(self, x: Tensor, positions: Tensor) -> Tensor:
        """Rotate `x` by `positions`; see the class docstring for shapes."""
        if x.shape[-1] != self.head_dim:
            raise ValueError(f"x must have last dimension d={self.head_dim}, got shape {_checks.sizes(x)}")
        return self.rotate(x, self.angles(positions, x.dtype, x.device))

    def angles(self, positions: Tensor, dtype: torch.dtype, device: torch.device, *, end: int | None = None) -> Angles:
        """The rotation angles of `positions`, to rotate several tensors at the same positions.

        In eager mode they are one complex number `cos + i sin` per pair, and
        [`rotate`][mha.RotaryEmbedding.rotate] is one complex multiplication.
        Under `torch.compile` and `torch.export` (whose graphs and ONNX have no
        complex numbers) they are `(cos, sin)` per rotated feature: `cos`
        holds each pair's cosine at both of its features, and `sin` holds
        `-sin` at the first and `+sin` at the second feature of each pair.
        Both are multiplied by `attention_factor`.
        Given `end`, a bound on the positions (every position `< end`), they
        are read from a table kept for the next calls: a decoding step then
        costs a lookup instead of computing the angles again.

        Shape:
            positions: `(s,)` or `(b, s)`; complex angles: `(s, r/2)` or
            `(b, 1, s, r/2)`; cos, sin: `(s, r)` or `(b, 1, s, r)`.
        """
        if self._dynamic_length is not None:
            self._see_positions(positions)
        # Rotate in at least float32: half-precision angles lose whole positions.
        work = torch.promote_types(dtype, torch.float32)
        if torch.compiler.is_compiling():
            angles: Angles = self._per_feature(positions.to(work)[..., None] * self.frequencies(work, device))
        elif end is not None:
            angles = self._table(end, dtype, device)[positions]  # (s, r/2) | (b, s, r/2)
        else:
            angles = self._unit(positions.to(work)[..., None] * self.frequencies(work, device))
        if isinstance(angles, tuple):
            return tuple(a[:, None] if a.ndim == 3 else a for a in angles)  # type: ignore[return-value]
        return angles[:, None] if angles.ndim == 3 else angles  # (b, 1, s, ...): one angle for every head

    def angles_at(self, start: int, s: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Eager [`angles`][mha.RotaryEmbedding.angles] of positions `start, ..., start + s - 1`, from the table."""
        if self._dynamic_length is not None and s > 0:
            self._see(start + s)
        return self._table(start + s, dtype, device)[start : start + s]

    def _unit(self, angles: Tensor) -> Tensor:
        """Pair angles `(..., r/2)` -> the complex numbers `attention_factor (cos + i sin)`."""
        if self.attention_factor == 1.0:
            return torch.polar(torch.ones_like(angles), angles)
        return torch.polar(torch.full_like(angles, self.attention_factor), angles)

    def _per_feature(self, angles: Tensor) -> tuple[Tensor, Tensor]:
        """Pair angles `(..., r/2)` -> `cos` and signed `sin` per rotated feature `(..., r)`."""
        cos, sin = angles.cos(), angles.sin()
        if self.attention_factor != 1.0:
            cos, sin = cos * self.attention_factor, sin * self.attention_factor
        if self.interleaved:
            return cos.repeat_interleave(2, dim=-1), torch.stack((-sin, sin), dim=-1).flatten(-2)
        return torch.cat((cos, cos), dim=-1), torch.cat((-sin, sin), dim=-1)

    def _table(self, end: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """Complex angles of positions `0, 1, ...` for inputs of `dtype`, at least `end` rows `(rows, r/2)`."""
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
        per feature, `x * cos` plus the partners `(o, e)` times `(-sin, +sin)`.
        Features past `rotary_dim` pass through.
        """
        r = self.rotary_dim
        partial = r != x.shape[-1]
        rotated = x[..., :r] if partial else x
        if isinstance(angles, tuple):
            cos, sin = angles
            work = rotated.to(cos.dtype)
            out = work * cos + work[..., self._swap] * sin  # (b, n, s, r)
        elif self.interleaved:
            out = self._rotate_pairs(rotated, angles)
        else:
            out = self._rotate_halves(rotated, angles)
        if partial:
            out = torch.cat((out, x[..., r:].to(out.dtype)), dim=-1)
        return out if out.dtype == x.dtype else out.to(x.dtype)

    @staticmethod
    def _rotate_pairs(x: Tensor, angles: Tensor) -> Tensor:
        """Neighbouring pairs as complex numbers, times the angles; in the angles' real dtype."""
        # Plain tensor methods only, and no conversion that is not needed: a
        # decoding step rotates a few hundred numbers, so the calls are the cost.
        real = torch.float64 if angles.dtype == torch.complex128 else torch.float32
        pairs = x.reshape(x.shape[:-1] + (-1, 2))  # (..., r/2, 2)
        if pairs.dtype != real:
            pairs = pairs.to(real)
        try:
            numbers = torch.view_as_complex(pairs)
        except RuntimeError:  # a view with odd strides or offset
            numbers = torch.view_as_complex(pairs.contiguous())
        return torch.view_as_real(numbers * angles).flatten(-2)

    @staticmethod
    def _rotate_halves(x: Tensor, angles: Tensor) -> Tensor:
        """The halves as real and imaginary parts, times the angles; in `x`'s dtype."""
        real = torch.float64 if angles.dtype == torch.complex128 else torch.float32
        # (..., 2, r/2) -> (..., r/2, 2): each copy also converts, so the step costs
        # three kernels, as many as neighbouring pairs in 16 bits.
        pairs = x.unflatten(-1, (2, -1)).transpose(-1, -2)
        pairs = pairs.contiguous() if x.dtype == real else pairs.to(real, memory_format=torch.contiguous_format)
        out = torch.view_as_real(torch.view_as_complex(pairs) * angles).transpose(-1, -2)  # (..., 2, r/2)
        out = out.contiguous() if x.dtype == real else out.to(x.dtype, memory_format=torch.contiguous_format)
        return out.flatten(-2)

    def extra_repr(self) -> str:
        text = f"head_dim={self.head_dim}, base={self.base}, interleaved={self.interleaved}"
        if self.rotary_dim != self.head_dim:
            text += f", rotary_dim={self.rotary_dim}"
        return text + (f", scaling={self.scaling}" if self.scaling is not None else "")
