"""The constructor options of `Attention`: checked all at once, and written back for its repr.

`Options.check` raises on the first bad option, in the order `Attention`'s
signature lists them, before the module holds any of them. Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from mha import _checks
from mha.functional import BACKENDS, Backend
from mha.rotary import RotaryEmbedding

if TYPE_CHECKING:
    from mha.attention import Attention

__all__: list[str] = []


@dataclass(frozen=True)
class Options:
    """`Attention`'s options after their checks, with the defaults that depend on others filled in."""

    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    v_head_dim: int
    dropout: float
    scale: float | None
    positional: RotaryEmbedding | None
    backend: Backend
    qk_norm: bool
    qk_norm_eps: float
    sinks: bool
    softcap: float | None
    sliding_window: int | None
    alibi: bool

    @property
    def plain(self) -> bool:
        """No q/k-norm, sinks or soft-cap: plain attention, which the one-token decoding step computes."""
        return not (self.qk_norm or self.sinks or self.softcap is not None)

    def norms(self) -> tuple[nn.RMSNorm | None, nn.RMSNorm | None]:
        """The `q_norm` and `k_norm` that `qk_norm` asks for: over each head's `d` features."""
        if not self.qk_norm:
            return None, None
        return nn.RMSNorm(self.head_dim, eps=self.qk_norm_eps), nn.RMSNorm(self.head_dim, eps=self.qk_norm_eps)

    @classmethod
    def check(
        cls,
        hidden_size: object,
        num_heads: object,
        *,
        num_kv_heads: object,
        dropout: object,
        scale: object,
        positional: object,
        backend: object,
        head_dim: object,
        v_head_dim: object,
        qk_norm: object,
        qk_norm_eps: object,
        sinks: object,
        softcap: object,
        sliding_window: object,
        alibi: object,
    ) -> Options:
        """The options of `Attention(...)`, or the `ValueError`/`TypeError` naming the first bad one.

        Checked in the order of the signature; a check that relates two
        options comes with the later one (`head_dim`'s, for `positional`).
        """
        h = _checks.positive_int("hidden_size", hidden_size)
        n_h = _checks.positive_int("num_heads", num_heads)
        n_kv = _checks.positive_int("num_kv_heads", n_h if num_kv_heads is None else num_kv_heads)
        _checks.divisible("num_heads", n_h, "num_kv_heads", n_kv)
        dropout = _checks.probability("dropout", dropout)
        scale = None if scale is None else _checks.finite_number("scale", scale)
        if positional is not None and not isinstance(positional, RotaryEmbedding):
            raise TypeError(f"positional must be a mha.RotaryEmbedding or None, got {type(positional).__name__}")
        backend = _checks.one_of("backend", backend, BACKENDS)
        d = _checks.optional_positive_int("head_dim", head_dim)
        if d is None:
            _checks.divisible("hidden_size", h, "num_heads", n_h)
            d = h // n_h
        if positional is not None and positional.head_dim != d:
            raise ValueError(
                f"positional.head_dim must equal {'hidden_size / num_heads' if head_dim is None else 'head_dim'}"
                f" = {d}, got {positional.head_dim}"
            )
        d_v = _checks.optional_positive_int("v_head_dim", v_head_dim)
        return cls(
            h,
            n_h,
            n_kv,
            d,
            d if d_v is None else d_v,
            dropout,
            scale,
            positional,
            backend,  # type: ignore[arg-type]
            _checks.flag("qk_norm", qk_norm),
            _checks.positive_number("qk_norm_eps", qk_norm_eps),
            _checks.flag("sinks", sinks),
            None if softcap is None else _checks.positive_number("softcap", softcap),
            None if sliding_window is None else _checks.positive_int("sliding_window", sliding_window),
            _checks.flag("alibi", alibi),
        )


def extra_repr(attention: Attention) -> str:
    """`Attention.extra_repr`: the sizes, then the options that differ from their defaults, as they are now."""
    options = []
    if attention.head_dim * attention.num_heads != attention.hidden_size:
        options.append(f"head_dim={attention.head_dim}")
    if attention.v_head_dim != attention.head_dim:
        options.append(f"v_head_dim={attention.v_head_dim}")
    if attention.q_norm is not None:
        options.append(f"qk_norm=True, qk_norm_eps={attention.qk_norm_eps}")
    if attention.sinks is not None:
        options.append("sinks=True")
    if attention.softcap is not None:
        options.append(f"softcap={attention.softcap}")
    if attention.sliding_window is not None:
        options.append(f"sliding_window={attention.sliding_window}")
    if attention.alibi:
        options.append("alibi=True")
    if attention.shards > 1:
        options.append(f"shards={attention.shards}")
    if attention.context_parallel is not None:
        options.append(f"context_parallel={attention.context_parallel.size}")
    return (
        f"hidden_size={attention.hidden_size}, num_heads={attention.num_heads}, "
        f"num_kv_heads={attention.num_kv_heads}, dropout={attention.dropout}, backend={attention.backend!r}"
        + "".join(f", {option}" for option in options)
    )
