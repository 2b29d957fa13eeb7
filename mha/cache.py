"""The key/value cache for step-by-step decoding.

A decoder that generates one token at a time would recompute every past key
and value at every step. The cache keeps them instead, in buffers allocated
once at their final size, so that every step has the same tensor shapes
(`torch.compile` compiles a step once) and nothing is reallocated.

Shape letters are those of [`mha`][mha]; `s_max` is the cache's capacity.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mha import _checks

__all__ = ["KVCache"]


class KVCache:
    """Preallocated keys and values of past positions.

    Usually made by [`mha.MultiHeadAttention.new_cache`][mha.MultiHeadAttention.new_cache], which knows the
    head count and width. It stores `n_kv` heads, so grouped-query attention
    shrinks it by `n_h / n_kv`.

    Args:
        batch_size: `b`.
        max_len: `s_max`, the most positions it can hold.
        num_kv_heads: `n_kv`.
        head_dim: `d`.
        dtype: of the buffers; defaults to torch's default dtype.
        device: of the buffers.

    Attributes:
        keys: `(b, n_kv, s_max, d)`, keys after any rotary embedding.
        values: `(b, n_kv, s_max, d)`.
        position: a 0-d long tensor, the next free slot.

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
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self.max_len = _checks.positive_int("max_len", max_len)
        self.num_kv_heads = _checks.positive_int("num_kv_heads", num_kv_heads)
        self.head_dim = _checks.positive_int("head_dim", head_dim)
        size = (batch_size, num_kv_heads, max_len, head_dim)
        self.keys = torch.zeros(size, dtype=dtype, device=device)
        self.values = torch.zeros(size, dtype=dtype, device=device)
        # The write position lives on the device as a tensor, so a compiled
        # step reads it as data rather than baking it in as a constant.
        self.position = torch.zeros((), dtype=torch.long, device=device)
        self._length = 0

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

    def positions(self, s: int) -> Tensor:
        """Absolute positions `(s,)` that the next `s` tokens will take."""
        return self.position + torch.arange(s, device=self.position.device)

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Append a chunk of keys and values.

        Args:
            key: the chunk's keys, `(b, n_kv, s, d)`.
            value: the chunk's values, `(b, n_kv, s, d)`.

        Returns:
            `(keys, values, mask)`: all `s_max` slots of both buffers, and a
            bool mask `(s, s_max)` that lets chunk token `i` see the slots up
            to and including its own position (causal within the chunk; empty
            slots are never visible).

        Raises:
            ValueError: if the chunk's shape does not fit the cache or it would
                write past `max_len`; nothing is written then.
            TypeError: if the chunk's dtype is not the cache's.
        """
        b, n_kv, d = self.batch_size, self.num_kv_heads, self.head_dim
        key = _checks.shape("key", key, (b, n_kv, None, d), lambda: f"(b={b}, n_kv={n_kv}, s, d={d})")
        _checks.shape("value", value, key.shape, lambda: f"like key {tuple(key.shape)}")
        if key.dtype != self.keys.dtype or value.dtype != self.keys.dtype:
            raise TypeError(f"cache has dtype {self.keys.dtype}, got key {key.dtype} and value {value.dtype}")
        self.check_room(key.shape[-2])
        return self.write(key, value)

    def check_room(self, s: int) -> None:
        """Raise `ValueError` if `s` more positions do not fit."""
        if self._length + s > self.max_len:
            if torch.compiler.is_compiling():
                # Dynamo cannot format symbolic sizes (the message was lost to
                # "BUILD_STRING type error"); a constant one survives, and
                # without fullgraph Dynamo re-runs this in eager, with the numbers.
                raise ValueError(
                    "KVCache overflow: the chunk does not fit in max_len; make a larger cache or reset() it"
                )
            raise ValueError(
                f"KVCache overflow: it holds {self._length} of max_len={self.max_len} positions "
                f"and cannot take {s} more; make a larger cache or reset() it"
            )

    def write(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """`update` without its checks, for callers that made them."""
        s = key.shape[-2]
        positions = self.positions(s)  # (s,)
        if torch.is_grad_enabled() and (key.requires_grad or value.requires_grad or self.keys.requires_grad):
            # Training through cached steps: an in-place write would overwrite
            # buffers that earlier steps saved for backward. Write out of place,
            # at the cost of a new buffer per step.
            self.keys = self.keys.index_copy(2, positions, key)
            self.values = self.values.index_copy(2, positions, value)
        else:
            self.keys.index_copy_(2, positions, key)
            self.values.index_copy_(2, positions, value)
        self.position += s
        self._length += s
        slots = torch.arange(self.max_len, device=positions.device)  # (s_max,)
        mask = slots <= positions[:, None]  # (s, s_max)
        return self.keys, self.values, mask

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
            f"length={self._length}, dtype={self.keys.dtype})"
        )
