"""The key/value cache for step-by-step decoding.

A decoder that generates one token at a time would recompute every past key
and value at every step. The cache keeps them instead, in buffers allocated
once at their final size, so nothing is reallocated. In eager mode a step
attends over the filled slots only, so its cost follows what is filled, not
`max_len`; under `torch.compile` it attends over all `max_len` slots (the
empty ones masked), so every step has the same shapes and compiles once.

Batches of prompts of different lengths decode together: pass a
`token_mask` (True at real tokens) with the padded prompt, and the cache
remembers which slots are padding and gives each sample its own positions.

Shape letters are those of [`mha`][mha]; `s_max` is the cache's capacity.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from mha import _blockwise, _checks, masks
from mha._blockwise import Pattern

__all__ = ["KVCache"]


class _Chunk(NamedTuple):
    """What a chunk attends over once it is in a cache (see `KVCache._append`)."""

    keys: Tensor  # (b, n_kv, slots, d)
    values: Tensor  # (b, n_kv, slots, d_v)
    mask: Tensor | None  # broadcastable to (b, n_h, s, slots): the caller's mask and what the cache blocks
    is_causal: bool  # whether the kernel adds the bottom-right causal mask itself
    guard: bool  # whether positions the mask blocks for every query may hold a non-finite number


class KVCache:
    """Preallocated keys and values of past positions.

    Usually made by [`mha.MultiHeadAttention.new_cache`][mha.MultiHeadAttention.new_cache], which knows the
    head count and width. It stores `n_kv` heads, so grouped-query attention
    shrinks it by `n_h / n_kv`.

    Args:
        batch_size: `b`.
        max_len: `s_max`, the most positions it can hold.
        num_kv_heads: `n_kv`.
        head_dim: `d`, the width of a key head.
        v_head_dim: `d_v`, the width of a value head; defaults to `d`.
        dtype: of the buffers; defaults to torch's default dtype.
        device: of the buffers.

    Attributes:
        keys: `(b, n_kv, s_max, d)`, keys after any rotary embedding; empty
            and padding slots hold zeros.
        values: `(b, n_kv, s_max, d_v)`.
        position: a 0-d long tensor, the next free slot.
        token_mask: `(b, s_max)` bool, True at slots that hold real tokens,
            once a `token_mask` has been written (`None` before: every
            filled slot is real).

    Examples:
        >>> import torch
        >>> from mha import KVCache
        >>> cache = KVCache(1, 8, num_kv_heads=2, head_dim=4)
        >>> _ = cache.update(torch.ones(1, 2, 3, 4), torch.ones(1, 2, 3, 4))
        >>> cache.length, cache.keys.shape
        (3, torch.Size([1, 2, 8, 4]))
    """

    def __init__(
        self,
        batch_size: int,
        max_len: int,
        *,
        num_kv_heads: int,
        head_dim: int,
        v_head_dim: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self.max_len = _checks.positive_int("max_len", max_len)
        self.num_kv_heads = _checks.positive_int("num_kv_heads", num_kv_heads)
        self.head_dim = _checks.positive_int("head_dim", head_dim)
        v_head_dim = _checks.optional_positive_int("v_head_dim", v_head_dim)
        self.v_head_dim = head_dim if v_head_dim is None else v_head_dim
        dtype = _checks.floating_dtype("dtype", dtype)
        self.keys = torch.zeros((batch_size, num_kv_heads, max_len, head_dim), dtype=dtype, device=device)
        self.values = torch.zeros((batch_size, num_kv_heads, max_len, self.v_head_dim), dtype=dtype, device=device)
        # The write position lives on the device as a tensor, so a compiled
        # step reads it as data rather than baking it in as a constant.
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self._length = 0
        # Ragged batches only: which slots hold real tokens, and each sample's next position.
        self.token_mask: Tensor | None = None
        self._next: Tensor | None = None

    @property
    def length(self) -> int:
        """How many positions are filled."""
        return self._length

    def reset(self) -> None:
        """Forget every position, keeping the buffers."""
        # detach: after training through cached steps the buffers are graph outputs
        self.keys = self.keys.detach().zero_()
        self.values = self.values.detach().zero_()
        self.position.zero_()
        self._length = 0
        self.token_mask = self._next = None

    def _positions(self, s: int, token_mask: Tensor | None = None) -> Tensor:
        """Positions of the next `s` tokens: `(s,)`, or `(b, s)` per sample in a ragged batch.

        In a ragged batch a sample's position counts its real tokens only, so
        padding (left, right or between chunks) never shifts its positions.
        """
        if token_mask is None and self._next is None:
            if torch.compiler.is_compiling():
                return self.position + torch.arange(s, device=self.position.device)  # data, not a constant
            return torch.arange(self._length, self._length + s, device=self.position.device)
        real = self._real(s, token_mask)
        start = self._next if self._next is not None else self.position.expand(self.batch_size)
        return start[:, None] + real.cumsum(dim=1) - 1  # (b, s); padding gets its neighbour's, masked anyway

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append a chunk of keys and values.

        Args:
            key: the chunk's keys, `(b, n_kv, s, d)`.
            value: the chunk's values, `(b, n_kv, s, d_v)`.

        Returns:
            `(keys, values, mask)`: the filled slots of both buffers (all
            `s_max` under `torch.compile`, where shapes stay fixed), and a
            bool mask `(s, slots)` that lets chunk token `i` see the slots up
            to and including its own position (causal within the chunk; empty
            slots are never visible).

        Raises:
            ValueError: if the chunk's shape does not fit the cache or it would
                write past `max_len`; nothing is written then.
            TypeError: if the chunk's dtype is not the cache's.
        """
        b, n_kv, d, d_v = self.batch_size, self.num_kv_heads, self.head_dim, self.v_head_dim
        key = _checks.shape("key", key, (b, n_kv, None, d), lambda: f"(b={b}, n_kv={n_kv}, s, d={d})")
        s = key.shape[2]
        _checks.shape("value", value, (b, n_kv, s, d_v), lambda: f"(b={b}, n_kv={n_kv}, s={int(s)}, d_v={d_v})")
        if key.dtype != self.keys.dtype or value.dtype != self.keys.dtype:
            raise TypeError(f"cache has dtype {self.keys.dtype}, got key {key.dtype} and value {value.dtype}")
        self._check_room(s)
        keys, values, _, _, _ = self._append(key, value)
        return keys, values, self._visible(s)

    def _real(self, s: int, token_mask: Tensor | None) -> Tensor:
        """`token_mask` as long `(b, s)`, all ones when it is `None`."""
        if token_mask is None:
            return torch.ones(self.batch_size, s, dtype=torch.long, device=self.position.device)
        return token_mask.long()

    def _check_room(self, s: int) -> None:
        """Raise `ValueError` if `s` more positions do not fit."""
        if self._length + s > self.max_len:
            # Every number through _checks: under torch.compile they may be symbolic.
            raise ValueError(
                f"KVCache overflow: it holds {_checks.number(self._length)} of max_len={_checks.number(self.max_len)} "
                f"positions and cannot take {_checks.number(s)} more; make a larger cache or reset() it"
            )

    def _append(
        self,
        key: Tensor,
        value: Tensor,
        token_mask: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        pattern: Pattern | None = None,
        num_heads: int = 1,
    ) -> _Chunk:
        """How a chunk sees the cache: write it, and return what its queries attend over.

        `update` without its checks, for the attention layer, which made them
        where the call entered. The keys and values are the filled slots in
        eager mode, all `s_max` under `torch.compile` (fixed shapes); the mask
        lets each chunk token see the slots up to its own (never an empty slot
        or padding), blocks what the caller's `mask` blocks, and adds a
        `pattern`'s window and ALiBi by position.

        Shape:
            key: `(b, n_kv, s, d)`; value: `(b, n_kv, s, d_v)`; token_mask: `(b, s)`;
            mask: broadcastable to `(b, n_h, s, s_max)` (or to the filled slots).
        """
        keys, values = self._write(key, value, token_mask)
        s, slots = key.shape[-2], keys.shape[2]
        # The slots the cache itself blocks (empty, padding) hold zeros, so only
        # a caller's mask can block a non-finite number: guard only then.
        guard = mask is not None
        if mask is not None and mask.shape[-1] > slots:
            mask = mask[..., :slots]  # a mask over all s_max slots, cut to the filled ones
        if pattern is None and self.token_mask is None and not torch.compiler.is_compiling():
            # Eager, every slot a filled real token: the chunk is the last s of
            # them, so "causal within the chunk" is the bottom-right causal mask.
            return _Chunk(keys, values, mask, s > 1, guard)
        by_position = None if pattern is None else self._pattern_mask(pattern, s, num_heads, keys.dtype)
        seen = masks._combine(by_position, self._visible(s))  # ALiBi's float first: it sets the dtype
        return _Chunk(keys, values, masks._combine(seen, mask), False, guard)

    def _pattern_mask(self, pattern: Pattern, s: int, num_heads: int, dtype: torch.dtype) -> Tensor | None:
        """Window and ALiBi between the chunk and the slots (after the write), by position."""
        slots = self.max_len if torch.compiler.is_compiling() else self._length
        device = self.position.device
        if self.token_mask is None:
            k_pos = torch.arange(slots, device=device)[None]  # (1, slots): every slot its own position
        else:
            k_pos = self.token_mask[:, :slots].long().cumsum(dim=1) - 1  # (b, slots): real tokens counted
        chunk = self.position - s + torch.arange(s, device=device)  # the chunk's slots (s,)
        return _blockwise.position_mask(
            pattern,
            k_pos[:, chunk],
            k_pos,
            is_causal=True,
            num_heads=num_heads,
            dtype=torch.float64 if dtype == torch.float64 else torch.float32,
        )

    def _write(self, key: Tensor, value: Tensor, token_mask: Tensor | None) -> tuple[Tensor, Tensor]:
        """Put the chunk in the next slots; return the slots to attend over (see `_append`)."""
        s = key.shape[-2]
        if token_mask is not None or self._next is not None:
            self._track_tokens(s, token_mask)
        if token_mask is not None:
            # Padding slots hold zeros, not the padding's keys and values: no query
            # ever sees them, and an inf or NaN there could still reach the
            # result through the kernels (inf - inf, 0 * inf).
            real = token_mask[:, None, :, None]  # (b, 1, s, 1)
            key, value = key.masked_fill(~real, 0.0), value.masked_fill(~real, 0.0)
        compiling = torch.compiler.is_compiling()
        # In place is safe unless autograd records this write or saved the buffers earlier.
        if torch.is_grad_enabled() and (key.requires_grad or value.requires_grad or self.keys.requires_grad):
            # Training through cached steps: out of place, at the cost of a new buffer per step.
            positions = self.position + torch.arange(s, device=self.position.device)
            self.keys = self.keys.index_copy(2, positions, key)
            self.values = self.values.index_copy(2, positions, value)
        elif compiling:
            # The write position as data, not a constant baked into the graph.
            positions = self.position + torch.arange(s, device=self.position.device)
            self.keys.index_copy_(2, positions, key)
            self.values.index_copy_(2, positions, value)
        else:
            start = self._length  # eager decoding: write the slots directly
            self.keys[:, :, start : start + s] = key
            self.values[:, :, start : start + s] = value
        self.position += s
        self._length += s
        end = self.max_len if compiling else self._length
        return self.keys[:, :, :end], self.values[:, :, :end]

    def _write_token(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor]:
        """`_write` for one token per sample, in eager mode and without autograd.

        The decoding step, with nothing left to decide: the caller made sure
        there is room, no ragged batch and no graph to record.

        Shape:
            key: `(b, n_kv, d)`; value: `(b, n_kv, d_v)`; returns the filled slots of both,
            `(b, n_kv, slots, d)` and `(b, n_kv, slots, d_v)`.
        """
        start = self._length
        keys, values = self.keys, self.values
        keys.select(2, start).copy_(key)  # methods rather than indexing, which parses its slices at every call
        values.select(2, start).copy_(value)
        self.position += 1
        self._length = end = start + 1
        return keys.narrow(2, 0, end), values.narrow(2, 0, end)

    def _visible(self, s: int) -> Tensor:
        """Which slots (as `_write` returned them) each of the last `s` tokens may see.

        Causal within the chunk, never an empty slot, never padding.

        Shape:
            output: `(s, slots)`, or `(b, 1, s, slots)` in a ragged batch.
        """
        end = self.max_len if torch.compiler.is_compiling() else self._length
        chunk = self.position - s + torch.arange(s, device=self.position.device)  # the chunk's slots (s,)
        mask = torch.arange(end, device=chunk.device) <= chunk[:, None]  # (s, slots)
        if self.token_mask is not None:
            mask = mask & self.token_mask[:, None, None, :end]  # (b, 1, s, slots)
        return mask

    def _track_tokens(self, s: int, token_mask: Tensor | None) -> None:
        """Record which of the next `s` slots hold real tokens, and advance each sample's position."""
        real = self._real(s, token_mask)  # (b, s)
        if self.token_mask is None or self._next is None:
            # The slots filled so far held real tokens only.
            self.token_mask = torch.arange(self.max_len, device=real.device).expand(self.batch_size, -1) < self._length
            self._next = self.position.expand(self.batch_size).clone()
        start = self._length
        self.token_mask[:, start : start + s] = real.bool()
        self._next = self._next + real.sum(dim=1)

    def __copy__(self) -> KVCache:
        # A shallow copy would share the buffers and the position tensor but
        # not the length counter, and the two would drift apart.
        raise TypeError(
            "a KVCache cannot be shallow-copied (the copy would share its buffers); "
            "use copy.deepcopy(cache) for an independent cache"
        )

    def __repr__(self) -> str:
        return (
            f"KVCache(batch_size={self.batch_size}, max_len={self.max_len}, "
            f"num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            + (f"v_head_dim={self.v_head_dim}, " if self.v_head_dim != self.head_dim else "")
            + f"length={self._length}, dtype={self.keys.dtype})"
        )
