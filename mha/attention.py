"""`Attention` and `MultiHeadAttention`: the two classes of the tutorial.

`Attention` takes queries, keys and values that are already projected,
splits them into heads, computes the attention weights and the context, and
merges the heads again. `MultiHeadAttention` puts the query, key, value and
output projections around it: `self.attention = Attention(...)`.

Arguments are checked once, where a call enters (`forward` of either class);
what runs after that trusts them. Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from typing import Literal, Protocol, cast, overload

import torch
from torch import Tensor, nn

from mha import _attention_checks, _blockwise, _checks, _token_step, masks
from mha._blockwise import Pattern
from mha.cache import KVCache
from mha.functional import BACKENDS, Backend, Dispatch, attend, choose_path, path_for
from mha.rolling import RollingKVCache
from mha.rotary import Angles, RotaryEmbedding

__all__ = ["Attention", "MultiHeadAttention", "SequenceLayout"]


class SequenceLayout(Protocol):
    """How the sequence is split across ranks, for an `Attention` under context parallelism.

    [`mha.parallel.context_parallel`][mha.parallel.context.context_parallel] sets one on
    each `Attention` (its `context_parallel` attribute). The core only calls
    these three methods; the layout and its communication live in `mha.parallel`.

    Attributes:
        size: the number of ranks the sequence is split over.
    """

    size: int

    def check(self, s_q: int, s_kv: int, *, is_causal: bool, rotary: bool) -> None:
        """Raise `ValueError` if these local lengths cannot be attended across ranks."""

    def positions(self, length: int, device: torch.device) -> Tensor:
        """The global positions `(s,)` of this rank's `length` tokens, for rotary embeddings."""

    def attend(self, q: Tensor, k: Tensor, v: Tensor, *, is_causal: bool, scale: float | None) -> Tensor:
        """The context `(b, n_h, s_q, d)` of local queries over every rank's keys and values."""


class Attention(nn.Module):
    """Scaled dot-product attention over heads, on projected inputs.

    Splits `(b, s, n * d)` inputs into `n` heads of width `d`, computes
    `softmax(q kᵀ · scale + mask) v` per head, and merges the heads back.
    Query heads share key/value heads in groups of `n_h / n_kv`
    (grouped-query attention; `n_kv = 1` is multi-query attention).

    Args:
        hidden_size: `h`, the model width; the queries and the output are
            `h` wide unless `head_dim` says otherwise.
        num_heads: `n_h`; must divide `hidden_size` unless `head_dim` is given.
        num_kv_heads: `n_kv`; must divide `num_heads`. Defaults to `num_heads`.
        dropout: probability of zeroing an attention weight, in training only.
        scale: multiplies the scores; defaults to `1 / sqrt(d)`.
        positional: a [`mha.RotaryEmbedding`][mha.RotaryEmbedding] applied to queries and keys.
        backend: `"auto"` (fused kernel unless weights are requested),
            `"fused"` or `"math"`; see [`mha.functional.choose_path`][mha.functional.choose_path].
        head_dim: `d`, the width of a query and key head; defaults to
            `h / n_h`. Qwen3-4B has 32 heads of 128 in a width of 2560.
        v_head_dim: `d_v`, the width of a value head (and so of the
            context per head); defaults to `d`.
        qk_norm: RMSNorm over each head's queries and keys (submodules
            `q_norm` and `k_norm`, each a `torch.nn.RMSNorm(d)` with a
            learnable weight), after the head split and before rotary
            positions, as Qwen3 and Gemma 3 do. Gemma's norm multiplies by
            `1 + weight`: store `1 + weight` here. A norm over the whole
            width before the split (OLMo 2) is not this option: put it after
            the projection, e.g. `m.q_proj = nn.Sequential(m.q_proj, nn.RMSNorm(n_h * d))`
            on a [`mha.MultiHeadAttention`][mha.MultiHeadAttention] (see its example).
        qk_norm_eps: the `eps` of those norms.
        sinks: a learned sink logit per query head (parameter `sinks`,
            `(n_h,)`, zeros at first) that joins each row's softmax and
            takes its share of the weight without a value (gpt-oss). Runs
            fused, the kernel's output rescaled by its log-sum-exp.
        softcap: `c > 0` bounds the scores to `c · tanh(scores / c)` before
            the mask (Gemma 2 uses 50). No fused kernel applies it: the math
            path runs, in chunks of queries so that memory stays bounded.
        sliding_window: `w`, or `None` for no window. A query at position `p`
            sees the keys `j` with `|p - j| < w`; with `is_causal` (and in
            cached decoding) `p - w < j <= p`: the last `w` positions, its
            own included, as Mistral's `sliding_window` counts. See
            [`mha.masks.sliding_window_mask`][mha.masks.sliding_window_mask].
        alibi: add ALiBi's per-head linear bias `-m_h · |p - j|` (Press et
            al., 2022; slopes as in BLOOM, for any head count).

    Attributes:
        hidden_size: `h`.
        num_heads: `n_h`.
        num_kv_heads: `n_kv`.
        head_dim: `d`, `h / n_h` unless given.
        v_head_dim: `d_v`, `d` unless given.
        q_norm: the queries' `torch.nn.RMSNorm`, with `qk_norm=True` (else `None`).
        k_norm: the keys' `torch.nn.RMSNorm`, with `qk_norm=True` (else `None`).
        sinks: the `(n_h,)` sink logits, a parameter with `sinks=True` (else `None`).
        softcap: the soft-cap of the scores, or `None`.
        shards: `t`, the number of tensor-parallel ranks the heads are split
            over; 1 unless [`mha.parallel.parallelize`][mha.parallel.tensor.parallelize] set it.
        context_parallel: the [`SequenceLayout`][mha.attention.SequenceLayout] of a
            sequence split across ranks; `None` unless
            [`mha.parallel.context_parallel`][mha.parallel.context.context_parallel] set it.

    Shape:
        query: `(b, s_q, n_h * d)`; key: `(b, s_kv, n_kv * d)`; value: `(b, s_kv, n_kv * d_v)`;
        output: `(b, s_q, n_h * d_v)`; weights: `(b, n_h, s_q, s_kv)`.
        By default `n_h * d = h`. With `shards = t`, each rank passes `1/t`
        of these widths and holds `1/t` of the heads.

    Examples:
        >>> import torch
        >>> from mha import Attention
        >>> attn = Attention(hidden_size=8, num_heads=2)
        >>> q = k = v = torch.randn(1, 3, 8)
        >>> context, weights = attn(q, k, v, need_weights=True)
        >>> context.shape, weights.shape
        (torch.Size([1, 3, 8]), torch.Size([1, 2, 3, 3]))
        >>> torch.allclose(weights.sum(-1), torch.ones(1, 2, 3))  # each row sums to 1
        True

        With sinks, each row keeps back the sink's share:

        >>> attn = Attention(8, 2, sinks=True)
        >>> with torch.no_grad():
        ...     _ = attn.sinks.fill_(1.0)
        ...
        >>> _, weights = attn(q, k, v, need_weights=True)
        >>> bool((weights.sum(-1) < 1).all())
        True
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        *,
        num_kv_heads: int | None = None,
        dropout: float = 0.0,
        scale: float | None = None,
        positional: RotaryEmbedding | None = None,
        backend: Backend = "auto",
        head_dim: int | None = None,
        v_head_dim: int | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        sinks: bool = False,
        softcap: float | None = None,
        sliding_window: int | None = None,
        alibi: bool = False,
    ) -> None:
        super().__init__()
        self.sliding_window = None if sliding_window is None else _checks.positive_int("sliding_window", sliding_window)
        self.alibi = _checks.flag("alibi", alibi)
        self.hidden_size = _checks.positive_int("hidden_size", hidden_size)
        self.num_heads = _checks.positive_int("num_heads", num_heads)
        if _checks.optional_positive_int("head_dim", head_dim) is None:
            _checks.divisible("hidden_size", hidden_size, "num_heads", num_heads)
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        self.num_kv_heads = _checks.positive_int("num_kv_heads", num_kv_heads)
        _checks.divisible("num_heads", num_heads, "num_kv_heads", num_kv_heads)
        self.head_dim = hidden_size // num_heads if head_dim is None else head_dim
        v_head_dim = _checks.optional_positive_int("v_head_dim", v_head_dim)
        self.v_head_dim = self.head_dim if v_head_dim is None else v_head_dim
        self.dropout = _checks.probability("dropout", dropout)
        self.scale = None if scale is None else _checks.finite_number("scale", scale)
        if positional is not None and not isinstance(positional, RotaryEmbedding):
            raise TypeError(f"positional must be a mha.RotaryEmbedding or None, got {type(positional).__name__}")
        if positional is not None and positional.head_dim != self.head_dim:
            raise ValueError(
                f"positional.head_dim must equal {'hidden_size / num_heads' if head_dim is None else 'head_dim'}"
                f" = {self.head_dim}, "
                f"got {positional.head_dim}"
            )
        self.positional = positional
        self.backend: Backend = _checks.one_of("backend", backend, BACKENDS)  # type: ignore[assignment]
        self._init_options(qk_norm, qk_norm_eps, sinks, softcap)
        self.shards = 1
        self.context_parallel: SequenceLayout | None = None

    def _init_options(self, qk_norm: object, qk_norm_eps: object, sinks: object, softcap: object) -> None:
        """q/k-norm, sinks and soft-capping: checked all before any is set."""
        qk_norm = _checks.flag("qk_norm", qk_norm)
        eps = _checks.positive_number("qk_norm_eps", qk_norm_eps)
        sinks = _checks.flag("sinks", sinks)
        self.softcap = None if softcap is None else _checks.positive_number("softcap", softcap)
        self.qk_norm_eps = eps
        self.q_norm: nn.RMSNorm | None = nn.RMSNorm(self.head_dim, eps=eps) if qk_norm else None
        self.k_norm: nn.RMSNorm | None = nn.RMSNorm(self.head_dim, eps=eps) if qk_norm else None
        # gpt-oss initialises its sinks at random; zeros give a sink the weight of a key scored 0.
        self.sinks: nn.Parameter | None = nn.Parameter(torch.zeros(self.num_heads)) if sinks else None
        # Whether a one-token decoding step may take MultiHeadAttention's shortcut (plain attention only).
        self._plain = not (qk_norm or sinks or self.softcap is not None)

    def explain(self, *, need_weights: bool = False, length: int | None = None, documents: bool = False) -> Dispatch:
        """Which path `forward` takes for these arguments, and why.

        With a `sliding_window`, `alibi` or `documents` (a call with
        `document_ids`), give the sequence `length` to learn whether the
        pattern runs as one dense mask or blockwise.

        Examples:
            >>> from mha import Attention
            >>> Attention(8, 2).explain().path
            'fused'
            >>> Attention(8, 2, backend="math").explain().reason
            'backend="math" was requested'
            >>> Attention(8, 2, softcap=50.0).explain().path
            'math'
            >>> Attention(8, 2, sliding_window=512).explain(length=16384).layout
            'blockwise'
        """
        dispatch = choose_path(
            need_weights=_checks.flag("need_weights", need_weights),
            backend=self.backend,
            softcap=self.softcap,
            sinks=self.sinks is not None,
            dropout=self.training and self.dropout > 0,
        )
        if self.q_norm is not None:
            order = " and before rotary positions" if self.positional is not None else ""
            dispatch = Dispatch(
                dispatch.path, dispatch.reason + f"; qk_norm: RMSNorm over each head's queries and keys{order}"
            )
        if not (self.sliding_window is not None or self.alibi or _checks.flag("documents", documents)):
            return dispatch
        if length is None:
            return Dispatch(dispatch.path, dispatch.reason + "; pass length= to learn the layout", "dense")
        length = _checks.positive_int("length", length)
        pattern = Pattern(self.sliding_window, self.alibi, torch.zeros(1, 1) if documents else None)
        plan = _blockwise.plan(pattern, length, length, is_causal=True, path=dispatch.path)
        return Dispatch(dispatch.path, f"{dispatch.reason}; {plan.reason}", plan.layout)

    def _pattern(self, document_ids: Tensor | None) -> Pattern | None:
        """This module's window and ALiBi, with a call's documents; `None` for none of them."""
        if self.sliding_window is None and not self.alibi and document_ids is None:
            return None
        return Pattern(self.sliding_window, self.alibi, document_ids)

    @overload
    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        mask: Tensor | None = ...,
        is_causal: bool = ...,
        need_weights: Literal[False] = ...,
        cache: KVCache | None = ...,
        token_mask: Tensor | None = ...,
        document_ids: Tensor | None = ...,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        mask: Tensor | None = ...,
        is_causal: bool = ...,
        need_weights: Literal[True],
        cache: KVCache | None = ...,
        token_mask: Tensor | None = ...,
        document_ids: Tensor | None = ...,
    ) -> tuple[Tensor, Tensor]: ...

    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        cache: KVCache | None = None,
        token_mask: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Attend from `query` to `key`/`value`.

        Args:
            query: projected queries.
            key: projected keys.
            value: projected values.
            mask: bool (True = may attend) or float (added to the scores),
                broadcastable to `(b, n_h, s_q, s_kv)`; with a cache,
                `s_kv` is the cache's `max_len`.
            is_causal: causal mask aligned bottom-right (the queries are the
                last `s_q` positions). A cache always attends causally.
            need_weights: also return the per-head weights.
            cache: a [`mha.KVCache`][mha.KVCache] to append this chunk's keys and
                values to and attend over.
            token_mask: with a cache, a bool `(b, s_q)`, True at the chunk's
                real tokens and False at padding; the cache remembers it, so
                later steps never attend to the padding and each sample's
                rotary positions count its real tokens only.
            document_ids: `(b, s_kv)` integers for packed sequences: a query
                attends only within its document (a run of equal ids), and
                rotary positions restart at 0 with each document. Not with a cache.

        Returns:
            The context `(b, s_q, h)`, or `(context, weights)` when
            `need_weights=True`.

        Raises:
            ValueError: on a shape that does not fit (the message names it),
                or a cache that is full or made for another call.
            TypeError: on a non-tensor input, a mask of the wrong dtype, a
                non-bool flag, or a cache of another dtype.
        """
        query, key, value = _attention_checks.check_projected(
            self, query, key, value, mask, is_causal, need_weights, cache, document_ids
        )
        return self._run(
            query,
            key,
            value,
            mask=mask,
            is_causal=is_causal,
            need_weights=need_weights,
            cache=cache,
            token_mask=token_mask,
            document_ids=document_ids,
        )

    def _run(
        self,
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
            self, query, key.shape[1], mask, is_causal, need_weights, cache, token_mask, document_ids
        )
        if projections is not None:
            query, key, value = projections[0](query), projections[1](key), projections[2](value)
        return self._attend(query, key, value, mask, is_causal, need_weights, cache, token_mask, document_ids)

    def _attend(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        mask: Tensor | None,
        is_causal: bool,
        need_weights: bool,
        cache: KVCache | None,
        token_mask: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """`forward` after its checks."""
        s_q, s_kv = query.shape[1], key.shape[1]
        q = self._split_heads(query)  # (b, n_h, s_q, d)
        k = self._split_heads(key)  # (b, n_kv, s_kv, d)
        v = self._split_heads(value, self.v_head_dim)  # (b, n_kv, s_kv, d_v)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)  # per head, before rotary positions
        if self.context_parallel is not None:
            return self._attend_across_ranks(self.context_parallel, q, k, v, is_causal)
        guard = True
        pattern = self._pattern(document_ids)
        if isinstance(cache, RollingKVCache):
            q, k, v, mask = self._roll(cache, q, k, v, token_mask)
            is_causal, pattern = False, None  # the mask holds the window, causality and ALiBi
        elif cache is None:
            if self.positional is not None:
                if document_ids is not None:
                    # Packed documents: each one's positions start again at 0.
                    positions = masks.document_positions(document_ids)  # (b, s_kv)
                    q = self.positional(q, positions[:, s_kv - s_q :])
                    k = self.positional(k, positions)
                else:
                    # Queries are the last s_q positions (negative when s_q > s_kv),
                    # as in the bottom-right causal alignment.
                    q = self.positional(q, torch.arange(s_kv - s_q, s_kv, device=q.device))
                    k = self.positional(k, torch.arange(s_kv, device=k.device))
        else:
            if self.positional is not None:
                if token_mask is None and cache.token_mask is None and not torch.compiler.is_compiling():
                    # Eager, every slot a real token: positions are the slots themselves.
                    angles: Angles = self.positional.angles_at(cache.length, s_q, q.dtype, q.device)
                else:
                    positions = cache.positions(s_q, token_mask)  # (s_q,), or (b, s_q) in a ragged batch
                    # Positions never exceed the slots written (padding counts only in slots).
                    angles = self.positional.angles(positions, q.dtype, q.device, end=cache.length + s_q)
                q, k = self.positional.rotate(q, angles), self.positional.rotate(k, angles)
            k, v = cache.write(k, v, token_mask)  # (b, n_kv, slots, d) twice
            # The slots the cache itself blocks (empty, padding) hold zeros, so only
            # a caller's mask can block a non-finite number: guard only then.
            guard = mask is not None
            if mask is not None and mask.shape[-1] > k.shape[2]:
                mask = mask[..., : k.shape[2]]  # a mask over all s_max slots, cut to the filled ones
            if pattern is None and cache.token_mask is None and not torch.compiler.is_compiling():
                # Eager, every slot a filled real token: the chunk is the last s_q of
                # them, so "causal within the chunk" is the bottom-right causal mask.
                is_causal = s_q > 1
            else:
                mask = masks._combine(mask, cache.visible(s_q))
                if pattern is not None:
                    mask = masks._combine(self._slot_mask(cache, pattern, s_q, q), mask)
                is_causal, pattern = False, None  # the visible slots are already causal within the chunk

        dropout_p = self.dropout if self.training else 0.0
        path = path_for(need_weights, self.backend)
        if self.sinks is None and self.softcap is None:
            context, weights = attend(
                q, k, v, mask, is_causal, self.scale, dropout_p, path, guard=guard, pattern=pattern
            )
        else:
            context, weights = attend(
                q,
                k,
                v,
                mask,
                is_causal,
                self.scale,
                dropout_p,
                path,
                guard=guard,
                sinks=self._local_sinks(),
                softcap=self.softcap,
                pattern=pattern,
            )
        context = context.transpose(1, 2).flatten(2)  # (b, s_q, n_h * d_v)
        if need_weights:
            return context, cast(Tensor, weights)  # need_weights chose the math path, which returns them
        return context

    def _slot_mask(self, cache: KVCache, pattern: Pattern, s_q: int, q: Tensor) -> Tensor | None:
        """Window and ALiBi between the chunk and the slots of a plain cache (after the write), by position."""
        slots = cache.max_len if torch.compiler.is_compiling() else cache.length
        if cache.token_mask is None:
            k_pos = torch.arange(slots, device=q.device)[None]  # (1, slots): every slot its own position
        else:
            k_pos = cache.token_mask[:, :slots].long().cumsum(dim=1) - 1  # (b, slots): real tokens counted
        chunk = cache.position - s_q + torch.arange(s_q, device=q.device)  # the chunk's slots (s_q,)
        return _blockwise.position_mask(
            pattern,
            k_pos[:, chunk],
            k_pos,
            is_causal=True,
            num_heads=q.shape[1],
            dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
        )

    def _roll(
        self, cache: RollingKVCache, q: Tensor, k: Tensor, v: Tensor, token_mask: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Rotate, attend over the ring and the chunk, and roll the chunk in: `(q, keys, values, mask)`."""
        positions = cache.positions(q.shape[2], token_mask)  # (b, s_q), real tokens counted
        if self.positional is not None:
            angles = self.positional.angles(positions.clamp(min=0), q.dtype, q.device)
            q, k = self.positional.rotate(q, angles), self.positional.rotate(k, angles)
        keys, values, key_positions = cache.extend(k, v, positions, token_mask)  # (b, n_kv, w + s_q, d)
        mask = _blockwise.position_mask(
            Pattern(cache.window, self.alibi),
            positions,
            key_positions,
            is_causal=True,
            num_heads=q.shape[1],
            dtype=torch.float64 if q.dtype == torch.float64 else torch.float32,
        )
        return q, keys, values, masks._combine(mask, (key_positions >= 0)[:, None, None, :])

    def _attend_across_ranks(self, layout: SequenceLayout, q: Tensor, k: Tensor, v: Tensor, is_causal: bool) -> Tensor:
        """Context parallelism: local shards in, this rank's shard of the context out."""
        if self.positional is not None:
            positions = layout.positions(q.shape[2], q.device)  # global, not local, positions
            q, k = self.positional(q, positions), self.positional(k, positions)
        context = layout.attend(q, k, v, is_causal=is_causal, scale=self.scale)
        return context.transpose(1, 2).flatten(2)  # (b, s_q, n_h * d)

    def _local_sinks(self) -> Tensor | None:
        """The sink logits of this rank's heads (all of them unless tensor-parallel), cast to compute in."""
        sinks = self.sinks
        if sinks is None:
            return None
        if self.shards > 1:
            # Sharded with the heads by mha.parallel.parallelize: a DTensor whose local part is ours.
            sinks = sinks.to_local()  # type: ignore[attr-defined]
        return sinks

    def _split_heads(self, x: Tensor, d: int | None = None) -> Tensor:
        """(b, s, n * d) -> (b, n, s, d), for however many heads `x` holds; `d` defaults to the head width."""
        b, s, width = x.shape
        d = self.head_dim if d is None else d
        return x.reshape(b, s, width // d, d).transpose(1, 2)  # -1 fails when s = 0

    def extra_repr(self) -> str:
        shards = f", sliding_window={self.sliding_window}" if self.sliding_window is not None else ""
        shards += ", alibi=True" if self.alibi else ""
        shards += f", shards={self.shards}" if self.shards > 1 else ""
        if self.context_parallel is not None:
            shards += f", context_parallel={self.context_parallel.size}"
        return (
            f"hidden_size={self.hidden_size}, num_heads={self.num_heads}, "
            f"num_kv_heads={self.num_kv_heads}, dropout={self.dropout}, backend={self.backend!r}"
            f"{self._options_repr()}{shards}"
        )

    def _options_repr(self) -> str:
        """The options of modern layers that differ from their defaults, for `extra_repr`."""
        options = []
        if self.head_dim * self.num_heads != self.hidden_size:
            options.append(f"head_dim={self.head_dim}")
        if self.v_head_dim != self.head_dim:
            options.append(f"v_head_dim={self.v_head_dim}")
        if self.q_norm is not None:
            options.append(f"qk_norm=True, qk_norm_eps={self.qk_norm_eps}")
        if self.sinks is not None:
            options.append("sinks=True")
        if self.softcap is not None:
            options.append(f"softcap={self.softcap}")
        return "".join(f", {option}" for option in options)


class MultiHeadAttention(nn.Module):
    """Multi-head attention: projections around an [`Attention`][mha.Attention].

    `q = query Wq`, `k = key Wk`, `v = value Wv`, then `self.attention`
    computes the context per head, and `out_proj` mixes the heads. Called
    with one tensor it is self-attention; with three, cross-attention.

    Args:
        hidden_size: `h`, the width of the input and of the output.
        num_heads: `n_h`; must divide `hidden_size`.
        dropout: probability of zeroing an attention weight, in training only.
        num_kv_heads: `n_kv` key/value heads for grouped-query attention
            (1 = multi-query); must divide `num_heads`. Defaults to `num_heads`.
        bias: whether the four projections have a bias.
        kdim: width of `key` inputs; defaults to `hidden_size`.
        vdim: width of `value` inputs; defaults to `hidden_size`.
        scale: multiplies the scores; defaults to `1 / sqrt(d)`.
        positional: a [`mha.RotaryEmbedding`][mha.RotaryEmbedding] for queries and keys.
        backend: `"auto"`, `"fused"` or `"math"`
            (see [`mha.functional.choose_path`][mha.functional.choose_path]).
        sliding_window: `w`: with `is_causal`, each query sees the last `w`
            positions, its own included (see [`mha.Attention`][mha.Attention]).
            Self-attention only.
        alibi: ALiBi's per-head linear bias. Self-attention only.
        device: where to create the parameters.
        dtype: of the parameters.
        head_dim: `d`, the width of a query and key head; defaults to `h / n_h`.
        v_head_dim: `d_v`, the width of a value head; defaults to `d`.
        qk_norm: RMSNorm over each query and key head before rotary positions
            (Qwen3, Gemma 3); see [`mha.Attention`][mha.Attention].
        qk_norm_eps: the `eps` of those norms.
        sinks: a learned sink logit per head (gpt-oss); see [`mha.Attention`][mha.Attention].
        softcap: soft-cap of the scores, `c · tanh(scores / c)` (Gemma 2).

    Attributes:
        q_proj: `Linear(h, n_h * d)`.
        k_proj: `Linear(kdim, n_kv * d)`.
        v_proj: `Linear(vdim, n_kv * d_v)`.
        attention: the [`Attention`][mha.Attention] that splits heads and attends.
        out_proj: `Linear(n_h * d_v, h)`.

    Shape:
        query: `(b, s_q, h)`; key: `(b, s_kv, kdim)`; value: `(b, s_kv, vdim)`;
        mask: broadcastable to `(b, n_h, s_q, s_kv)`;
        output: `(b, s_q, h)`; weights: `(b, n_h, s_q, s_kv)`.

    Examples:
        >>> import torch
        >>> from mha import MultiHeadAttention
        >>> _ = torch.manual_seed(0)
        >>> batch_size, seq_length, hidden_size, num_heads, dropout = 2, 5, 64, 8, 0.1
        >>> mha = MultiHeadAttention(hidden_size, num_heads, dropout)
        >>> output = mha(torch.randn(batch_size, seq_length, hidden_size))
        >>> output.shape
        torch.Size([2, 5, 64])

        A layer of today, Qwen3's shape in small (heads wider than `h / n_h`,
        grouped keys and values, q/k-norm), and OLMo 2's norm over the whole
        width, which is a norm after the projection rather than an option:

        >>> from torch import nn
        >>> qwen = MultiHeadAttention(64, 4, num_kv_heads=2, head_dim=32, qk_norm=True, bias=False)
        >>> qwen.q_proj.weight.shape, qwen.attention.q_norm.weight.shape
        (torch.Size([128, 64]), torch.Size([32]))
        >>> olmo = MultiHeadAttention(64, 4, bias=False)
        >>> olmo.q_proj = nn.Sequential(olmo.q_proj, nn.RMSNorm(64, eps=1e-6))
        >>> olmo.k_proj = nn.Sequential(olmo.k_proj, nn.RMSNorm(64, eps=1e-6))
        >>> olmo(torch.randn(2, 5, 64)).shape
        torch.Size([2, 5, 64])
    """

    def __init__(
        self,
        hidden_size: int,
        num_heads: int,
        dropout: float = 0.0,
        *,
        num_kv_heads: int | None = None,
        bias: bool = True,
        kdim: int | None = None,
        vdim: int | None = None,
        scale: float | None = None,
        positional: RotaryEmbedding | None = None,
        backend: Backend = "auto",
        sliding_window: int | None = None,
        alibi: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        head_dim: int | None = None,
        v_head_dim: int | None = None,
        qk_norm: bool = False,
        qk_norm_eps: float = 1e-6,
        sinks: bool = False,
        softcap: float | None = None,
    ) -> None:
        super().__init__()
        attention = Attention(
            hidden_size,
            num_heads,
            num_kv_heads=num_kv_heads,
            dropout=dropout,
            scale=scale,
            positional=positional,
            backend=backend,
            head_dim=head_dim,
            v_head_dim=v_head_dim,
            qk_norm=qk_norm,
            qk_norm_eps=qk_norm_eps,
            sinks=sinks,
            softcap=softcap,
            sliding_window=sliding_window,
            alibi=alibi,
        )
        self.kdim = hidden_size if kdim is None else _checks.positive_int("kdim", kdim)
        self.vdim = hidden_size if vdim is None else _checks.positive_int("vdim", vdim)
        _checks.flag("bias", bias)
        factory = {"device": device, "dtype": _checks.floating_dtype("dtype", dtype)}
        self.attention = attention.to(device=device, dtype=dtype) if qk_norm or sinks else attention  # norms, sinks
        n_h, n_kv, d, d_v = num_heads, attention.num_kv_heads, attention.head_dim, attention.v_head_dim
        self.q_proj = nn.Linear(hidden_size, n_h * d, bias, **factory)
        self.k_proj = nn.Linear(self.kdim, n_kv * d, bias, **factory)
        self.v_proj = nn.Linear(self.vdim, n_kv * d_v, bias, **factory)
        self.out_proj = nn.Linear(n_h * d_v, hidden_size, bias, **factory)

    @property
    def hidden_size(self) -> int:
        """`h`."""
        return self.attention.hidden_size

    @property
    def num_heads(self) -> int:
        """`n_h`."""
        return self.attention.num_heads

    @property
    def num_kv_heads(self) -> int:
        """`n_kv`."""
        return self.attention.num_kv_heads

    @property
    def head_dim(self) -> int:
        """`d`."""
        return self.attention.head_dim

    @property
    def v_head_dim(self) -> int:
        """`d_v`."""
        return self.attention.v_head_dim

    def explain(self, *, need_weights: bool = False, length: int | None = None, documents: bool = False) -> Dispatch:
        """Which attention path `forward` takes, and why (see [`Attention.explain`][mha.Attention.explain]).

        Examples:
            >>> from mha import MultiHeadAttention
            >>> MultiHeadAttention(8, 2).explain(need_weights=True).path
            'math'
        """
        return self.attention.explain(need_weights=need_weights, length=length, documents=documents)

    @overload
    def forward(
        self,
        query: Tensor,
        key: Tensor | None = ...,
        value: Tensor | None = ...,
        *,
        mask: Tensor | None = ...,
        is_causal: bool = ...,
        need_weights: Literal[False] = ...,
        cache: KVCache | None = ...,
        token_mask: Tensor | None = ...,
        document_ids: Tensor | None = ...,
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        query: Tensor,
        key: Tensor | None = ...,
        value: Tensor | None = ...,
        *,
        mask: Tensor | None = ...,
        is_causal: bool = ...,
        need_weights: Literal[True],
        cache: KVCache | None = ...,
        token_mask: Tensor | None = ...,
        document_ids: Tensor | None = ...,
    ) -> tuple[Tensor, Tensor]: ...

    def forward(
        self,
        query: Tensor,
        key: Tensor | None = None,
        value: Tensor | None = None,
        *,
        mask: Tensor | None = None,
        is_causal: bool = False,
        need_weights: bool = False,
        cache: KVCache | None = None,
        token_mask: Tensor | None = None,
        document_ids: Tensor | None = None,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Project, attend, project back.

        Args:
            query: the sequence that asks.
            key: the sequence attended to; defaults to `query` (self-attention).
            value: defaults to `key`.
            mask: bool (True = may attend) or float (added to the scores),
                broadcastable to `(b, n_h, s_q, s_kv)`. Not called
                `attn_mask` on purpose: `nn.MultiheadAttention`'s boolean
                `attn_mask` means the opposite, and code written for it
                should fail loudly here rather than silently invert.
            is_causal: causal mask aligned bottom-right. With a cache it is
                not consulted: a multi-token chunk always attends causally.
            need_weights: also return per-head weights (uses the math path).
            cache: a [`mha.KVCache`][mha.KVCache] from [`new_cache`][mha.MultiHeadAttention.new_cache], for decoding.
            token_mask: with a cache, a bool `(b, s_q)`, True at real tokens and
                False at padding, for a batch of prompts of different lengths
                (left- or right-padded); see the decoding guide.
            document_ids: `(b, s)` integers for packed sequences (self-attention):
                each query attends within its document only, and rotary
                positions restart with each document.

        Returns:
            The output `(b, s_q, h)`, or `(output, weights)` with
            `need_weights=True`.

        Raises:
            ValueError: on a shape or device that does not fit (the message
                names it), or a cache that is full or made for another call.
            TypeError: on a non-tensor input, an input whose dtype is not the
                parameters', a mask of the wrong dtype, a non-bool flag, or a
                cache of another dtype.
        """
        if _token_step.applies(self, query, key, value, mask, is_causal, need_weights, cache, token_mask):
            return _token_step.run(self, query, cast(KVCache, cache))
        cross = key is not None and key is not query
        for name, t in (("query", query), ("key", key), ("value", value)):
            _checks.not_nested(name, t)
        key = query if key is None else key
        value = key if value is None else value
        _attention_checks.check_inputs(self, query, key, value)
        if cross:
            _attention_checks.check_cross(self, document_ids)
        result = self.attention._run(
            query,
            key,
            value,
            projections=(self.q_proj, self.k_proj, self.v_proj),
            mask=mask,
            is_causal=is_causal,
            need_weights=need_weights,
            cache=cache,
            token_mask=token_mask,
            document_ids=document_ids,
        )
        if isinstance(result, tuple):
            context, weights = result
            return self.out_proj(context), weights
        return self.out_proj(result)

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
        sliding_window: int | None = None,
    ) -> KVCache:
        """A preallocated [`mha.KVCache`][mha.KVCache] for this module.

        It holds this module's key/value heads (the local ones on a
        tensor-parallel rank). `dtype` and `device` default to the
        parameters'. For a module with a `sliding_window` it is a
        [`mha.rolling.RollingKVCache`][mha.rolling.RollingKVCache] of `w`
        positions: decoding then runs past `max_len`, which it does not need
        (if given, it bounds nothing). The window is always the module's:
        `sliding_window`, if given, must equal it (a windowless module
        decoding through a rolling cache would forget what its full pass sees).

        Raises:
            ValueError: if `sliding_window` differs from the module's (also
                when the module has none), or neither `max_len` nor a window
                is given.

        Examples:
            >>> import torch
            >>> from mha import MultiHeadAttention
            >>> m = MultiHeadAttention(64, 8, num_kv_heads=2).eval()
            >>> cache = m.new_cache(batch_size=1, max_len=16)
            >>> cache.keys.shape  # (b, n_kv, s_max, d)
            torch.Size([1, 2, 16, 8])
        """
        weight = self.out_proj.weight
        own = self.attention.sliding_window
        if sliding_window is not None:
            sliding_window = _checks.positive_int("sliding_window", sliding_window)
            if sliding_window != own:
                raise ValueError(f"sliding_window must be this module's ({own}), got {sliding_window}")
        window = own
        if window is not None:
            return RollingKVCache(
                batch_size,
                window,
                num_kv_heads=self.num_kv_heads // self.attention.shards,
                head_dim=self.head_dim,
                v_head_dim=self.v_head_dim,
                dtype=weight.dtype if dtype is None else dtype,
                device=weight.device if device is None else device,
            )
        if max_len is None:
            raise ValueError("max_len is required for a cache without a sliding window, got None")
        return KVCache(
            batch_size,
            max_len,
            num_kv_heads=self.num_kv_heads // self.attention.shards,
            head_dim=self.head_dim,
            v_head_dim=self.v_head_dim,
            dtype=weight.dtype if dtype is None else dtype,
            device=weight.device if device is None else device,
        )

    def extra_repr(self) -> str:
        return f"kdim={self.kdim}, vdim={self.vdim}"
