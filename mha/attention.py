"""`Attention` and `MultiHeadAttention`: the two classes of the tutorial.

`Attention` takes queries, keys and values that are already projected,
splits them into heads, computes the attention weights and the context, and
merges the heads again. `MultiHeadAttention` puts the query, key, value and
output projections around it: `self.attention = Attention(...)`.

Arguments are checked once, where a call enters (`forward` of either class);
what runs after that trusts them. Shape letters are those of [`mha`][mha].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol, TypedDict, cast, overload

import torch
from torch import Tensor, nn

from mha import _attention_checks, _checks, _dispatch, _options, _token_step
from mha._options import Options
from mha.cache import KVCache
from mha.functional import Backend, Dispatch
from mha.rolling import RollingKVCache
from mha.rotary import RotaryEmbedding

if TYPE_CHECKING:
    from typing_extensions import Unpack

__all__ = ["Attention", "MultiHeadAttention", "SequenceLayout"]


class _Keywords(TypedDict, total=False):
    """The keywords of both `forward`s besides `need_weights`, for their overloads."""

    mask: Tensor | None
    is_causal: bool
    cache: KVCache | None
    token_mask: Tensor | None
    document_ids: Tensor | None


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
            `1 + weight`: store `1 + weight` here. A norm over the whole width
            (OLMo 2) goes after the projection instead: see
            [`mha.MultiHeadAttention`][mha.MultiHeadAttention]'s example.
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

    Each option is kept as an attribute of the same name (`head_dim` and
    `v_head_dim` with their defaults filled in, `softcap` possibly `None`), and:

    Attributes:
        q_norm: the queries' `torch.nn.RMSNorm`, with `qk_norm=True` (else `None`).
        k_norm: the keys' `torch.nn.RMSNorm`, with `qk_norm=True` (else `None`).
        sinks: the `(n_h,)` sink logits, a parameter with `sinks=True` (else `None`).
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
        o = Options.check(
            hidden_size, num_heads, num_kv_heads=num_kv_heads, dropout=dropout, scale=scale, positional=positional,
            backend=backend, head_dim=head_dim, v_head_dim=v_head_dim, qk_norm=qk_norm, qk_norm_eps=qk_norm_eps,
            sinks=sinks, softcap=softcap, sliding_window=sliding_window, alibi=alibi,
        )  # fmt: skip
        self.hidden_size, self.num_heads, self.num_kv_heads = o.hidden_size, o.num_heads, o.num_kv_heads
        self.head_dim, self.v_head_dim, self.dropout, self.scale = o.head_dim, o.v_head_dim, o.dropout, o.scale
        self.positional, self.backend, self.softcap = o.positional, o.backend, o.softcap
        self.sliding_window, self.alibi, self.qk_norm_eps = o.sliding_window, o.alibi, o.qk_norm_eps
        self.q_norm, self.k_norm = o.norms()
        # gpt-oss initialises its sinks at random; zeros give a sink the weight of a key scored 0.
        self.sinks = nn.Parameter(torch.zeros(o.num_heads)) if o.sinks else None
        self._plain = o.plain  # whether a one-token decoding step may take MultiHeadAttention's shortcut
        self.shards = 1
        self.context_parallel: SequenceLayout | None = None

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
        return _dispatch.explain(self, need_weights, length, documents)

    @overload
    def forward(
        self,
        query: Tensor,
        key: Tensor,
        value: Tensor,
        *,
        need_weights: Literal[False] = ...,
        **options: Unpack[_Keywords],
    ) -> Tensor: ...

    @overload
    def forward(
        self, query: Tensor, key: Tensor, value: Tensor, *, need_weights: Literal[True], **options: Unpack[_Keywords]
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
            self,
            query,
            key,
            value,
            mask=mask,
            is_causal=is_causal,
            need_weights=need_weights,
            cache=cache,
            document_ids=document_ids,
        )
        return _dispatch.run(
            self,
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

    def extra_repr(self) -> str:
        return _options.extra_repr(self)


class _FromAttention:
    """A read-only attribute of `MultiHeadAttention`: its `attention`'s, under the same name."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, module: None, owner: type) -> _FromAttention: ...

    @overload
    def __get__(self, module: MultiHeadAttention, owner: type | None = None) -> int: ...

    def __get__(self, module: MultiHeadAttention | None, owner: type | None = None) -> int | _FromAttention:
        return self if module is None else cast(int, getattr(module.attention, self.name))

    def __set__(self, module: MultiHeadAttention, value: object) -> None:
        raise AttributeError(f"property {self.name!r} of {type(module).__name__!r} object has no setter")


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
        backend: `"auto"`, `"fused"` or `"math"` (see [`mha.functional.choose_path`][mha.functional.choose_path]).
        sliding_window: `w`: with `is_causal`, each query sees the last `w` positions,
            its own included (see [`mha.Attention`][mha.Attention]). Self-attention only.
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
        hidden_size: `h`; this and the next four are `self.attention`'s, read-only.
        num_heads: `n_h`.
        num_kv_heads: `n_kv`.
        head_dim: `d`.
        v_head_dim: `d_v`.
        q_proj: `Linear(h, n_h * d)`.
        k_proj: `Linear(kdim, n_kv * d)`.
        v_proj: `Linear(vdim, n_kv * d_v)`.
        attention: the [`Attention`][mha.Attention] that splits heads and attends.
        out_proj: `Linear(n_h * d_v, h)`.

    Shape:
        query: `(b, s_q, h)`; key: `(b, s_kv, kdim)`; value: `(b, s_kv, vdim)`; output: `(b, s_q, h)`;
        mask: broadcastable to `(b, n_h, s_q, s_kv)`; weights: `(b, n_h, s_q, s_kv)`.

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
            hidden_size, num_heads, num_kv_heads=num_kv_heads, dropout=dropout, scale=scale, positional=positional,
            backend=backend, head_dim=head_dim, v_head_dim=v_head_dim, qk_norm=qk_norm, qk_norm_eps=qk_norm_eps,
            sinks=sinks, softcap=softcap, sliding_window=sliding_window, alibi=alibi,
        )  # fmt: skip
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

    hidden_size, num_heads, num_kv_heads = _FromAttention(), _FromAttention(), _FromAttention()
    head_dim, v_head_dim = _FromAttention(), _FromAttention()

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
        need_weights: Literal[False] = ...,
        **options: Unpack[_Keywords],
    ) -> Tensor: ...

    @overload
    def forward(
        self,
        query: Tensor,
        key: Tensor | None = ...,
        value: Tensor | None = ...,
        *,
        need_weights: Literal[True],
        **options: Unpack[_Keywords],
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
                positions restart with each document. Not with a `cache`
                (packing is a training layout): decode each document with
                its own cache.

        Returns:
            The output `(b, s_q, h)`, or `(output, weights)` with
            `need_weights=True`.

        Raises:
            ValueError: on a shape or device that does not fit (the message names it), or a cache
                that is full or made for another call.
            TypeError: on a non-tensor input, an input whose dtype is not the parameters', a mask
                of the wrong dtype, a non-bool flag, or a cache of another dtype.
        """
        if _token_step.applies(self, query, key, value, mask, is_causal, need_weights, cache, token_mask, document_ids):
            return _token_step.run(self, query, cast(KVCache, cache))
        key, value = _attention_checks.check_module_inputs(self, query, key, value, document_ids)
        result = _dispatch.run(
            self.attention, query, key, value, projections=(self.q_proj, self.k_proj, self.v_proj),
            mask=mask, is_causal=is_causal, need_weights=need_weights, cache=cache, token_mask=token_mask,
            document_ids=document_ids,
        )  # fmt: skip
        if isinstance(result, tuple):
            return self.out_proj(result[0]), result[1]  # (output, weights)
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
        positions: decoding then runs past `max_len` (if given, it bounds nothing).

        Raises:
            ValueError: if `sliding_window` differs from the module's, also when
                the module has none (a windowless module decoding through a rolling
                cache would forget what its full pass sees), or neither `max_len`
                nor a window is given.

        Examples:
            >>> import torch
            >>> from mha import MultiHeadAttention
            >>> m = MultiHeadAttention(64, 8, num_kv_heads=2).eval()
            >>> cache = m.new_cache(batch_size=1, max_len=16)
            >>> cache.keys.shape  # (b, n_kv, s_max, d)
            torch.Size([1, 2, 16, 8])
        """
        own = _attention_checks.check_new_cache(self.attention, max_len, sliding_window)
        weight = self.out_proj.weight
        sizes = {"num_kv_heads": self.num_kv_heads // self.attention.shards, "head_dim": self.head_dim}
        dtype, device = weight.dtype if dtype is None else dtype, weight.device if device is None else device
        if own is not None:
            return RollingKVCache(batch_size, own, **sizes, v_head_dim=self.v_head_dim, dtype=dtype, device=device)
        return KVCache(batch_size, cast(int, max_len), **sizes, v_head_dim=self.v_head_dim, dtype=dtype, device=device)

    def extra_repr(self) -> str:
        return f"kdim={self.kdim}, vdim={self.vdim}"
