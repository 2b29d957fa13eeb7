"""The argument checks of `Attention.forward` and `MultiHeadAttention.forward`, run once at the entry.

Each raises `ValueError`/`TypeError` naming the argument, the value received
and what was expected, before any state (a cache) changes; what runs after
them trusts their arguments. Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor

from mha import _checks
from mha.cache import KVCache
from mha.functional import _check_pattern, choose_path
from mha.rolling import RollingKVCache

if TYPE_CHECKING:
    from mha.attention import Attention, MultiHeadAttention, SequenceLayout

__all__: list[str] = []


def check_projected(
    attention: Attention,
    query: object,
    key: object,
    value: object,
    *,
    mask: object,
    is_causal: object,
    need_weights: object,
    cache: object,
    document_ids: object,
) -> tuple[Tensor, Tensor, Tensor]:
    """`Attention.forward`'s projected inputs: tensors of its widths, one dtype and device; returned as tensors."""
    query = _checks.floating("query", _checks.tensor("query", query))
    if query.is_nested:
        check_nested(attention, mask, is_causal, need_weights, cache, document_ids)
    for name, t in (("key", key), ("value", value)):
        if isinstance(t, Tensor) and t.is_nested != query.is_nested:  # torch fails deep inside on a mix
            raise TypeError(
                f"{name} is {'' if t.is_nested else 'not '}a nested (jagged) tensor but query is "
                f"{'' if query.is_nested else 'not'}; pass query, key and value all nested or all padded"
            )
    width = attention.num_heads * attention.head_dim // attention.shards
    if query.ndim != 3 or query.shape[-1] != width:
        name = "h" if attention.num_heads * attention.head_dim == attention.hidden_size else "n_h * d"
        raise ValueError(f"query must have shape (b, s_q, {name}={width}), got {_checks.sizes(query)}")
    b = query.shape[0]
    kv_width = attention.num_kv_heads * attention.head_dim // attention.shards
    v_width = attention.num_kv_heads * attention.v_head_dim // attention.shards
    key = _checks.shape("key", key, (b, None, kv_width), lambda: f"(b={b}, s_kv, n_kv * d={kv_width})")
    s_kv = key.shape[1]
    value = _checks.shape(
        "value", value, (b, s_kv, v_width), lambda: f"(b={int(b)}, s_kv={int(s_kv)}, n_kv * d_v={v_width})"
    )
    for name, t in (("key", key), ("value", value)):
        _checks.same_dtype(name, t, "query", query)
        _checks.same_device(name, t, "query", query.device)
    return query, key, value


def check_nested(
    attention: Attention, mask: object, is_causal: object, need_weights: object, cache: object, document_ids: object
) -> None:
    """A nested query passes (for the drop-in TorchMultiheadAttention) only where torch computes it whole."""
    given = [
        name
        for name, on in (
            ("is_causal=True", is_causal is True),
            ("need_weights=True", need_weights is True),
            ("a mask", mask is not None),
            ("a cache", cache is not None),
            ("document_ids", document_ids is not None),
            ("rotary positions", attention.positional is not None),
            ("sliding_window", attention.sliding_window is not None),
            ("alibi", attention.alibi),
        )
        if on
    ]
    if given:
        raise TypeError(
            f"query is a nested (jagged) tensor, which mha does not take with {', '.join(given)}: pad the "
            "sequences and pass mask=mha.masks.padding_mask(lengths), or pack them with document_ids"
        )


def check_options(
    attention: Attention,
    query: Tensor,
    s_kv: int,
    *,
    mask: object,
    is_causal: object,
    need_weights: object,
    cache: object,
    token_mask: object = None,
    document_ids: object = None,
) -> None:
    """Flags, mask and cache; `query` is `(b, s_q, ...)` in the dtype attention runs in."""
    for name, t in (("mask", mask), ("token_mask", token_mask), ("document_ids", document_ids)):
        _checks.not_nested(name, t)
    _checks.flag("is_causal", is_causal)
    _checks.flag("need_weights", need_weights)
    if attention.backend == "fused":  # raises, saying why, for what the fused kernels cannot run
        choose_path(
            need_weights=bool(need_weights),
            backend="fused",
            softcap=attention.softcap,
            sinks=attention.sinks is not None,
            dropout=attention.training and attention.dropout > 0,
        )
    b, s_q = query.shape[0], query.shape[1]
    if attention.alibi and attention.shards > 1:
        raise ValueError(
            f"alibi=True is not supported under tensor parallelism (shards={attention.shards}): each head's "
            "slope depends on its global index, and a rank holds only some heads"
        )
    if document_ids is not None:
        if cache is not None:
            raise ValueError(
                "document_ids cannot be combined with a cache: packed documents are a training layout; "
                "decode each document with its own cache (or reset() it between documents)"
            )
        _check_pattern(None, False, document_ids, b=b, s_q=s_q, s_kv=s_kv, device=query.device)
    if attention.context_parallel is not None:
        check_context_parallel(attention, s_q, s_kv, mask, is_causal, need_weights, cache)
        if attention.sliding_window is not None or attention.alibi or document_ids is not None:
            raise ValueError(
                "sliding_window, alibi and document_ids are not supported under context parallelism: "
                "the ring attends over whole shards"
            )
    if cache is not None:
        if not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a mha.KVCache, got {type(cache).__name__}")
        if s_kv != s_q:
            raise ValueError(f"with a cache, query and key must be the same chunk: got s_q={s_q} and s_kv={s_kv}")
        check_cache_fits(attention, cache, query)
        s_kv = cache.max_len
        if isinstance(cache, RollingKVCache):
            check_rolling(attention, cache, mask)
        if token_mask is not None:
            token_mask = _checks.shape("token_mask", token_mask, (b, s_q), lambda: f"(b={b}, s_q={s_q})")
            if token_mask.dtype != torch.bool:
                raise TypeError(f"token_mask must be a bool tensor (True = real token), got dtype {token_mask.dtype}")
            _checks.same_device("token_mask", token_mask, "query", query.device)
    elif token_mask is not None:
        raise ValueError("token_mask goes with a cache (it marks the padding the cache keeps); got cache=None")
    if mask is not None:
        n_h = attention.num_heads // attention.shards
        mask = _checks.mask("mask", mask, (b, n_h, s_q, s_kv), "(b, n_h, s_q, s_kv)")
        _checks.same_device("mask", mask, "query", query.device)


def check_context_parallel(
    attention: Attention, s_q: int, s_kv: int, mask: object, is_causal: object, need_weights: object, cache: object
) -> None:
    """Refuse what ring attention cannot do exactly, rather than attend within the local shard."""
    d, d_v = attention.head_dim, attention.v_head_dim
    refused = (
        ("need_weights=True", need_weights),
        ("a mask", mask is not None),
        ("a KV cache", cache is not None),
        ("dropout in training", attention.training and attention.dropout > 0),
        ("sinks=True", attention.sinks is not None),
        (f"softcap={attention.softcap}", attention.softcap is not None),
        (f"v_head_dim={d_v} != head_dim={d}", d_v != d),
    )
    for what, given in refused:
        if given:
            detail = f" (dropout={attention.dropout})" if what.startswith("dropout") else ""
            raise ValueError(
                f"{what}{detail} is not supported under context parallelism: each rank holds only part "
                "of the sequence, and the ring computes attention without weights, masks, "
                "caches, dropout, sinks, soft-capping or a value width of its own; use is_causal=True "
                "for causal masking, or .eval() for dropout"
            )
    layout = cast("SequenceLayout", attention.context_parallel)
    layout.check(s_q, s_kv, is_causal=bool(is_causal), rotary=attention.positional is not None)


def check_rolling(attention: Attention, cache: RollingKVCache, mask: object) -> None:
    """A rolling cache: its window is this layer's, and its slots move, so a mask over them means nothing."""
    # A windowless layer given a rolling cache would silently attend to its window only.
    if cache.window != attention.sliding_window:
        raise ValueError(
            f"cache holds a window of {cache.window} positions, but this layer's sliding_window is "
            f"{attention.sliding_window}; make it with new_cache()"
        )
    if mask is not None:
        raise ValueError(
            "mask cannot be combined with a RollingKVCache (its slots move as it rolls); "
            "mark padding with token_mask instead"
        )


def check_cache_fits(attention: Attention, cache: KVCache, query: Tensor) -> None:
    """Raise before the cache is written to, naming the cache as what does not fit."""
    b, s = query.shape[0], query.shape[1]
    n_kv = attention.num_kv_heads // attention.shards
    held = (cache.batch_size, cache.num_kv_heads, cache.head_dim, cache.v_head_dim)
    wanted = (b, n_kv, attention.head_dim, attention.v_head_dim)
    if held != wanted:
        names = ("b", "n_kv", "d", "d_v") if held[3] != held[2] or wanted[3] != wanted[2] else ("b", "n_kv", "d")

        def sizes(values: tuple[int, ...]) -> str:
            return ", ".join(f"{name}={value}" for name, value in zip(names, values, strict=False))

        raise ValueError(f"cache does not fit this call: it holds ({sizes(held)}), this call has ({sizes(wanted)})")
    device = query.device.type
    # Under autocast the projections, and so attention, run in the autocast dtype.
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else query.dtype
    if cache.keys.dtype != dtype or cache.keys.device != query.device:
        raise TypeError(
            f"cache has dtype {cache.keys.dtype} on {cache.keys.device}, but this call "
            f"computes in {dtype} on {query.device}; make it with "
            f"new_cache(..., dtype={dtype}, device='{query.device}')"
        )
    cache._check_room(s)


def check_cross(module: MultiHeadAttention, document_ids: object) -> None:
    """Windows, ALiBi and documents measure distances between query and key positions of one sequence."""
    attention = module.attention
    given = [
        name
        for name, on in (
            (f"sliding_window={attention.sliding_window}", attention.sliding_window is not None),
            ("alibi=True", attention.alibi),
            ("document_ids", document_ids is not None),
        )
        if on
    ]
    if given:
        raise ValueError(
            f"{', '.join(given)} needs self-attention (distances between positions of one sequence), "
            "but this call passes a separate key (cross-attention)"
        )


def check_module_inputs(
    module: MultiHeadAttention, query: object, key: object, value: object, document_ids: object
) -> tuple[Tensor, Tensor]:
    """`MultiHeadAttention.forward`'s inputs, unprojected; returns `key` and `value` with their defaults filled in."""
    cross = key is not None and key is not query
    for name, t in (("query", query), ("key", key), ("value", value)):
        _checks.not_nested(name, t)
    key = query if key is None else key
    value = key if value is None else value
    check_inputs(module, query, key, value)
    if cross:
        check_cross(module, document_ids)
    return cast(Tensor, key), cast(Tensor, value)


def check_new_cache(attention: Attention, max_len: object, sliding_window: object) -> int | None:
    """`MultiHeadAttention.new_cache`'s window must be the layer's; returns the layer's window."""
    own = attention.sliding_window
    if sliding_window is not None and _checks.positive_int("sliding_window", sliding_window) != own:
        raise ValueError(f"sliding_window must be this module's ({own}), got {sliding_window}")
    if own is None and max_len is None:
        raise ValueError("max_len is required for a cache without a sliding window, got None")
    return own


def check_inputs(module: MultiHeadAttention, query: object, key: object, value: object) -> None:
    # The attention's own attribute: Dynamo in torch 2.5 cannot trace MultiHeadAttention's descriptor for it.
    h, kdim, vdim = module.attention.hidden_size, module.kdim, module.vdim
    query = _checks.shape("query", query, (None, None, h), lambda: f"(b, s_q, h={h})")
    self_attention = key is query and value is query
    if not self_attention:  # self-attention: key and value are the query just checked
        b = query.shape[0]
        key = _checks.shape("key", key, (b, None, kdim), lambda: f"(b={b}, s_kv, kdim={kdim})")
        s_kv = key.shape[1]
        _checks.shape("value", value, (b, s_kv, vdim), lambda: f"(b={b}, s_kv={s_kv}, vdim={vdim})")
    weight = module.out_proj.weight  # out_proj: q_proj may be wrapped (a whole-width norm after it)
    _checks.floating("query", query)
    if query.dtype != weight.dtype and not torch.is_autocast_enabled(query.device.type):
        raise TypeError(
            f"query must have the parameters' dtype {weight.dtype}, got {query.dtype} "
            f"(convert the input, or the module with .to({query.dtype}))"
        )
    for name, t in (("query", query), ("key", key), ("value", value))[: 1 if self_attention else 3]:
        _checks.same_device(name, t, "the parameters", weight.device)  # type: ignore[arg-type]
        if name != "query":
            _checks.same_dtype(name, t, "query", query)  # type: ignore[arg-type]
