"""How an `Attention` call reaches a kernel, after its checks: heads, positions, cache, path.

`Attention.forward` and `MultiHeadAttention.forward` check their arguments
and call `run`; each function below does one step of
what follows, for the module it is given. Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn

from mha import _attention_checks, _blockwise, _checks, _qk_norm, masks
from mha._blockwise import Pattern
from mha._kernels import attend_unchecked, requested_path
from mha.cache import KVCache
from mha.functional import Dispatch, choose_path
from mha.rolling import RollingKVCache
from mha.rotary import Angles

if TYPE_CHECKING:
    from mha.attention import Attention, SequenceLayout

__all__: list[str] = []


def run(
    attention: Attention,
    query: Tensor,
    key: Tensor,
    value: Tensor,
    *,
    projections: tuple[nn.Module, ...] | None = None,
    mask: Tensor | None,
    is_causal: bool,
    need_weights: bool,
    cache: KVCache | None,
    token_mask: Tensor | None,
    document_ids: Tensor | None,
) -> Tensor | tuple[Tensor, Tensor]:
    """The one way in after the inputs' shapes are checked: options checked, then (projected and) attended.

    `MultiHeadAttention` passes its unprojected inputs with its `q/k/v`
    `projections`, so that every option is checked before any projection runs.
    """
    _attention_checks.check_options(
        attention,
        query,
        key.shape[1],
        mask=mask,
        is_causal=is_causal,
        need_weights=need_weights,
        cache=cache,
        token_mask=token_mask,
        document_ids=document_ids,
    )
    if projections is not None:
        query, key, value = projections[0](query), projections[1](key), projections[2](value)
    s_q, s_kv = query.shape[1], key.shape[1]
    q = split_heads(query, attention.head_dim)  # (b, n_h, s_q, d)
    k = split_heads(key, attention.head_dim)  # (b, n_kv, s_kv, d)
    v = split_heads(value, attention.v_head_dim)  # (b, n_kv, s_kv, d_v)
    if attention.q_norm is not None and attention.k_norm is not None:
        # per head, before rotary positions
        q, k = _qk_norm.head_norm(attention.q_norm, q), _qk_norm.head_norm(attention.k_norm, k)
    if attention.context_parallel is not None:
        return _across_ranks(attention, attention.context_parallel, q, k, v, is_causal)
    pattern = _pattern(attention, document_ids)
    if cache is None:
        q, k = _rotate(attention, q, k, s_q, s_kv, document_ids)
        return _kernel(
            attention, q, k, v, mask=mask, is_causal=is_causal, need_weights=need_weights, guard=True, pattern=pattern
        )
    q, k = _rotate_cached(attention, cache, q, k, token_mask)
    chunk = cache._append(k, v, token_mask, mask=mask, pattern=pattern, num_heads=q.shape[1])
    # The chunk's mask holds the window, ALiBi and causality within the chunk.
    return _kernel(
        attention,
        q,
        chunk.keys,
        chunk.values,
        mask=chunk.mask,
        is_causal=chunk.is_causal,
        need_weights=need_weights,
        guard=chunk.guard,
        pattern=None,
    )


def _kernel(
    attention: Attention,
    q: Tensor,
    k: Tensor,
    v: Tensor,
    *,
    mask: Tensor | None,
    is_causal: bool,
    need_weights: bool,
    guard: bool,
    pattern: Pattern | None,
) -> Tensor | tuple[Tensor, Tensor]:
    """Split heads in, merged context (and weights) out, on the path the module's options pick."""
    dropout_p = attention.dropout if attention.training else 0.0
    path = requested_path(need_weights, attention.backend)
    sinks, softcap = _local_sinks(attention), attention.softcap
    context, weights = attend_unchecked(
        q,
        k,
        v,
        mask=mask,
        is_causal=is_causal,
        scale=attention.scale,
        dropout_p=dropout_p,
        path=path,
        guard=guard,
        sinks=sinks,
        softcap=softcap,
        pattern=pattern,
    )
    context = context.transpose(1, 2).flatten(2)  # (b, s_q, n_h * d_v)
    if need_weights:
        return context, cast(Tensor, weights)  # need_weights chose the math path, which returns them
    return context


def explain(attention: Attention, need_weights: object, length: object, documents: object) -> Dispatch:
    """`Attention.explain`: the path, its reason, and for a pattern its layout at `length`."""
    dispatch = choose_path(
        need_weights=_checks.flag("need_weights", need_weights),
        backend=attention.backend,
        softcap=attention.softcap,
        sinks=attention.sinks is not None,
        dropout=attention.training and attention.dropout > 0,
    )
    if attention.q_norm is not None:
        order = " and before rotary positions" if attention.positional is not None else ""
        dispatch = Dispatch(
            dispatch.path, dispatch.reason + f"; qk_norm: RMSNorm over each head's queries and keys{order}"
        )
    if not (attention.sliding_window is not None or attention.alibi or _checks.flag("documents", documents)):
        return dispatch
    if length is None:
        return Dispatch(dispatch.path, dispatch.reason + "; pass length= to learn the layout", "dense")
    length = _checks.positive_int("length", length)
    pattern = Pattern(attention.sliding_window, attention.alibi, torch.zeros(1, 1) if documents else None)
    plan = _blockwise.plan(pattern, length, length, is_causal=True, path=dispatch.path)
    return Dispatch(dispatch.path, f"{dispatch.reason}; {plan.reason}", plan.layout)


def split_heads(x: Tensor, d: int) -> Tensor:
    """(b, s, n * d) -> (b, n, s, d), for however many heads of width `d` `x` holds."""
    b, s, width = x.shape
    return x.reshape(b, s, width // d, d).transpose(1, 2)  # -1 fails when s = 0


def _pattern(attention: Attention, document_ids: Tensor | None) -> Pattern | None:
    """The module's window and ALiBi, with a call's documents; `None` for none of them."""
    if attention.sliding_window is None and not attention.alibi and document_ids is None:
        return None
    return Pattern(attention.sliding_window, attention.alibi, document_ids)


def _rotate(
    attention: Attention, q: Tensor, k: Tensor, s_q: int, s_kv: int, document_ids: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Rotary positions without a cache: queries are the last `s_q` of the `s_kv` positions."""
    if attention.positional is None:
        return q, k
    if document_ids is not None:
        # Packed documents: each one's positions start again at 0.
        positions = masks._document_positions(document_ids)  # (b, s_kv)
        return attention.positional(q, positions[:, s_kv - s_q :]), attention.positional(k, positions)
    # Negative when s_q > s_kv, as in the bottom-right causal alignment.
    q = attention.positional(q, torch.arange(s_kv - s_q, s_kv, device=q.device))
    return q, attention.positional(k, torch.arange(s_kv, device=k.device))


def _rotate_cached(
    attention: Attention, cache: KVCache, q: Tensor, k: Tensor, token_mask: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Rotary positions of a chunk about to be written to a cache."""
    if attention.positional is None:
        return q, k
    s_q = q.shape[2]
    if isinstance(cache, RollingKVCache):
        positions = cache._positions(s_q, token_mask).clamp(min=0)  # (b, s_q), real tokens counted
        angles: Angles = attention.positional.angles(positions, q.dtype, q.device)
    elif token_mask is None and cache.token_mask is None and not torch.compiler.is_compiling():
        # Eager, every slot a real token: positions are the slots themselves.
        angles = attention.positional.angles_at(cache.length, s_q, q.dtype, q.device)
    else:
        positions = cache._positions(s_q, token_mask)  # (s_q,), or (b, s_q) in a ragged batch
        # Positions never exceed the slots written (padding counts only in slots).
        angles = attention.positional.angles(positions, q.dtype, q.device, end=cache.length + s_q)
    return attention.positional.rotate(q, angles), attention.positional.rotate(k, angles)


def _across_ranks(
    attention: Attention, layout: SequenceLayout, q: Tensor, k: Tensor, v: Tensor, is_causal: bool
) -> Tensor:
    """Context parallelism: local shards in, this rank's shard of the context out."""
    if attention.positional is not None:
        positions = layout.positions(q.shape[2], q.device)  # global, not local, positions
        q, k = attention.positional(q, positions), attention.positional(k, positions)
    context = layout.attend(q, k, v, is_causal=is_causal, scale=attention.scale)
    return context.transpose(1, 2).flatten(2)  # (b, s_q, n_h * d)


def _local_sinks(attention: Attention) -> Tensor | None:
    """The sink logits of this rank's heads (all of them unless tensor-parallel), cast to compute in."""
    sinks = attention.sinks
    if sinks is None:
        return None
    if attention.shards > 1:
        # Sharded with the heads by mha.parallel.parallelize: a DTensor whose local part is ours.
        sinks = sinks.to_local()  # type: ignore[attr-defined]
    return sinks
