"""A rolling key/value cache: the last `w` positions, for sliding-window layers.

A layer with `sliding_window=w` never looks further back than `w`
positions, so its cache need not hold more. This one keeps them in a ring
buffer: position `p` lives in slot `p mod w`, and a new token overwrites
the one that just left the window. Memory follows `w`, not the length of
the generation, and decoding runs as long as one likes.

Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from typing import NoReturn

import torch
from torch import Tensor

from mha import _blockwise, _checks, masks
from mha._blockwise import Pattern
from mha.cache import KVCache, _Chunk

__all__ = ["RollingKVCache"]


def _refuse() -> NoReturn:
    raise TypeError(
        "a RollingKVCache is filled by the attention layer it was made for (its slots roll); "
        "call the layer with cache=..., or use extend()"
    )


class RollingKVCache(KVCache):
    """Keys and values of each sample's last `window` positions, in a ring buffer.

    Usually made by [`mha.MultiHeadAttention.new_cache`][mha.MultiHeadAttention.new_cache] for a module with
    a `sliding_window`. A cached call attends over the ring and the new
    chunk together, so a chunk (a prompt, say) may be longer than the
    window; then the ring keeps the chunk's last `window` real tokens. In a
    ragged batch (`token_mask`), padding takes no slot and no position.

    With `need_weights=True` the weights' `w + 1 + s_q` columns are the
    ring's slots as they were before the call (in slot order, not position
    order: `slot_positions` read before the call says which position each
    holds), then the chunk's tokens; empty and scratch slots get weight 0.

    Args:
        batch_size: `b`.
        window: `w`, the positions kept (the layer's `sliding_window`).
        num_kv_heads: `n_kv`.
        head_dim: `d`.
        v_head_dim: `d_v`, the width of a value head; defaults to `d`.
        dtype: of the buffers.
        device: of the buffers.

    Attributes:
        window: `w`.
        keys: `(b, n_kv, w + 1, d)`; slot `w` is scratch, where tokens that
            fall out of the window are written and forgotten.
        values: like `keys`.
        slot_positions: `(b, w + 1)` long, the position held in each slot,
            -1 where empty.

    Examples:
        >>> import torch
        >>> from mha import MultiHeadAttention
        >>> m = MultiHeadAttention(16, 4, sliding_window=3).eval()
        >>> cache = m.new_cache(batch_size=1)
        >>> with torch.no_grad():
        ...     for _ in range(5):
        ...         _ = m(torch.randn(1, 1, 16), cache=cache)
        ...
        >>> cache.slot_positions[0, :3].tolist()  # positions 2, 3, 4 in slots 4 % 3, 3 % 3, 2 % 3 ...
        [3, 4, 2]
    """

    def __init__(
        self,
        batch_size: int,
        window: int,
        *,
        num_kv_heads: int,
        head_dim: int,
        v_head_dim: int | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.window = _checks.positive_int("window", window)
        super().__init__(
            batch_size,
            window + 1,
            num_kv_heads=num_kv_heads,
            head_dim=head_dim,
            v_head_dim=v_head_dim,
            dtype=dtype,
            device=device,
        )
        self.slot_positions = torch.full((batch_size, window + 1), -1, dtype=torch.long, device=device)
        self.next_positions = torch.zeros(batch_size, dtype=torch.long, device=device)  # each sample's next

    def reset(self) -> None:
        """Forget every position, keeping the buffers."""
        super().reset()
        self.slot_positions.fill_(-1)
        self.next_positions = torch.zeros_like(self.slot_positions[:, 0])

    def update(self, key: Tensor, value: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Refused: a ring's slots move, so the layer fills it (see [`extend`][mha.rolling.RollingKVCache.extend])."""
        _refuse()

    def _check_room(self, s: int) -> None:
        """A ring is never full: nothing to check."""

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
        """How a chunk sees the ring: the ring's slots and the chunk, masked by position; then roll it in.

        `mask` is refused where the call enters (a ring's slots move), so
        none comes here; the window is the ring's, ALiBi the `pattern`'s.
        """
        positions = self._positions(key.shape[2], token_mask)  # (b, s), real tokens counted
        keys, values, key_positions = self._extend(key, value, positions, token_mask)  # (b, n_kv, w + s, d)
        by_position = _blockwise.position_mask(
            Pattern(self.window, pattern is not None and pattern.alibi),
            positions,
            key_positions,
            is_causal=True,
            num_heads=num_heads,
            dtype=torch.float64 if key.dtype == torch.float64 else torch.float32,
        )
        # The chunk's padding is attended over in place, not zeroed as in the slots: guard it.
        return _Chunk(keys, values, masks._combine(by_position, (key_positions >= 0)[:, None, None, :]), False, True)

    def _positions(self, s: int, token_mask: Tensor | None = None) -> Tensor:
        """Each sample's positions of the next `s` tokens, counting real tokens only: `(b, s)`."""
        real = self._real(s, token_mask)  # (b, s)
        return self.next_positions[:, None] + real.cumsum(dim=1) - 1  # padding gets its neighbour's; never seen

    def extend(
        self, key: Tensor, value: Tensor, positions: Tensor, token_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """The keys and values to attend over, then write the chunk into the ring.

        Args:
            key: the chunk's keys `(b, n_kv, s, d)`, rotated already.
            value: the chunk's values `(b, n_kv, s, d_v)`.
            positions: the chunk's positions `(b, s)`, integers: each sample's
                next ones, counting real tokens only (what the ring expects
                after what it holds; a padding entry may be anything).
            token_mask: `(b, s)` bool, True at real tokens, or `None`.

        Returns:
            `(keys, values, key_positions)`: the ring's `w` slots followed by
            the chunk, `(b, n_kv, w + s, d)` and `(b, n_kv, w + s, d_v)`, and
            their positions `(b, w + s)`, -1 at empty slots and padding.

        Raises:
            ValueError: if a shape or device does not fit the ring, or
                `positions` are not each sample's next ones; nothing is
                written then.
            TypeError: if the chunk's dtype is not the ring's, or `positions`
                (`token_mask`) is not an integer (bool) tensor.
        """
        b, n_kv, d, d_v = self.batch_size, self.num_kv_heads, self.head_dim, self.v_head_dim
        key = _checks.shape("key", key, (b, n_kv, None, d), lambda: f"(b={b}, n_kv={n_kv}, s, d={d})")
        s = key.shape[2]
        value = _checks.shape("value", value, (b, n_kv, s, d_v), lambda: f"(b={b}, n_kv={n_kv}, s={s}, d_v={d_v})")
        if key.dtype != self.keys.dtype or value.dtype != self.keys.dtype:
            raise TypeError(f"cache has dtype {self.keys.dtype}, got key {key.dtype} and value {value.dtype}")
        for name, t in (("key", key), ("value", value)):
            _checks.same_device(name, t, "the cache", self.keys.device)
        positions = _checks.shape("positions", positions, (b, s), lambda: f"(b={b}, s={s})")
        if positions.dtype == torch.bool or positions.is_floating_point() or positions.is_complex():
            raise TypeError(f"positions must be an integer tensor, got dtype {positions.dtype}")
        _checks.same_device("positions", positions, "the cache", self.keys.device)
        if token_mask is not None:
            token_mask = _checks.shape("token_mask", token_mask, (b, s), lambda: f"(b={b}, s={s})")
            if token_mask.dtype != torch.bool:
                raise TypeError(f"token_mask must be a bool tensor (True = real token), got dtype {token_mask.dtype}")
            _checks.same_device("token_mask", token_mask, "the cache", self.keys.device)
        expected = self._positions(s, token_mask)  # (b, s)
        real = self._real(s, token_mask).bool()
        if not torch.equal(positions.masked_fill(~real, 0), expected.masked_fill(~real, 0)):
            raise ValueError(
                f"positions must be each sample's next ones after what the ring holds, "
                f"{expected.masked_fill(~real, -1).tolist()} (-1: padding, any value), got {positions.tolist()}"
            )
        return self._extend(key, value, positions, token_mask)

    def _extend(
        self, key: Tensor, value: Tensor, positions: Tensor, token_mask: Tensor | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """`extend` without its checks, for the layer, which checked at its entry."""
        w, s = self.window, key.shape[2]
        real = self._real(s, token_mask).bool()  # (b, s)
        chunk_positions = positions.masked_fill(~real, -1)
        keys = torch.cat((self.keys[:, :, :w], key), dim=2)  # (b, n_kv, w + s, d)
        values = torch.cat((self.values[:, :, :w], value), dim=2)  # (b, n_kv, w + s, d_v)
        key_positions = torch.cat((self.slot_positions[:, :w], chunk_positions), dim=1)  # (b, w + s)
        self._roll_in(key, value, chunk_positions, real)
        return keys, values, key_positions

    def _roll_in(self, key: Tensor, value: Tensor, positions: Tensor, real: Tensor) -> None:
        """Put the chunk's last `w` real tokens in their slots; the rest go to the scratch slot."""
        w = self.window
        self.next_positions = self.next_positions + real.sum(dim=1)
        kept = real & (positions >= self.next_positions[:, None] - w)  # (b, s): still inside the window
        slots = torch.where(kept, positions % w, torch.full_like(positions, w))  # (b, s)
        index = slots[:, None, :, None].expand_as(key)  # (b, n_kv, s, d)
        if torch.is_grad_enabled() and (key.requires_grad or value.requires_grad or self.keys.requires_grad):
            # Training through cached steps: out of place, as KVCache does.
            self.keys = self.keys.scatter(2, index, key)
            self.values = self.values.scatter(2, index, value)
        else:
            self.keys.scatter_(2, index, key)
            self.values.scatter_(2, index, value)
        self.slot_positions.scatter_(1, slots, positions.masked_fill(~kept, -1))
        self.slot_positions[:, w] = -1  # the scratch slot holds nothing
        self.position += key.shape[2]
        self._length += key.shape[2]

    def __repr__(self) -> str:
        return (
            f"RollingKVCache(batch_size={self.batch_size}, window={self.window}, "
            f"num_kv_heads={self.num_kv_heads}, head_dim={self.head_dim}, "
            f"length={self._length}, dtype={self.keys.dtype})"
        )
