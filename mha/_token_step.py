"""The one-token decoding shortcut of `MultiHeadAttention.forward`, beside the full path it shortcuts.

Decoding calls the module once per token, and with so few numbers per call
the Python around the kernels is much of its cost (see "Speed" in the
decoding guide). `applies` tells, in a few cheap
tests on every argument of `forward` that together imply every check of the
full path, whether a call is such a step (`tests/package/test_token_step.py`
checks that it is given every argument); `run` then computes what the full path
(`mha._dispatch.run` through a `KVCache`) would, with nothing left to decide.

It leans on torch internals (`torch._C._is_any_autocast_enabled`,
`nn.Module._compiled_call_impl`, the hook dictionaries of
`torch.nn.modules.module`); `tests/package/test_token_step.py` checks that they still exist.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

import torch
from torch import Tensor, nn
from torch.nn.modules import module as module_hooks

from mha._kernels import attend_one_query
from mha.cache import KVCache

if TYPE_CHECKING:
    from mha.attention import Attention, MultiHeadAttention

__all__: list[str] = []


def applies(
    module: MultiHeadAttention,
    query: object,
    key: object,
    value: object,
    mask: object,
    is_causal: object,
    need_weights: object,
    cache: object,
    token_mask: object,
    document_ids: object,
) -> bool:
    """Whether this call is one eager decoding step that every check of the full path would pass.

    A call that fails any of these tests, bad input included, takes the
    full path, which raises its usual errors.
    """
    if torch.compiler.is_compiling():
        return False  # compiled steps attend over all max_len slots; Dynamo would also guard on every test below
    if not (
        key is None
        and value is None
        and mask is None
        and token_mask is None
        and document_ids is None  # the full path refuses document_ids with a cache
        and need_weights is False
        and (is_causal is False or is_causal is True)
        and type(cache) is KVCache
        and type(query) is Tensor
    ):
        return False
    attention, keys = cast("Attention", module._modules["attention"]), cache.keys
    if attention.sliding_window is not None or attention.alibi or query.is_nested:
        return False  # the full path masks by position
    weight = cast(nn.Linear, module._modules["out_proj"]).weight
    return (
        query.shape == (cache.batch_size, 1, attention.hidden_size)
        and query.dtype == weight.dtype == keys.dtype
        and query.device == weight.device == keys.device
        and cache.length < cache.max_len
        and cache.token_mask is None
        and cache.num_kv_heads * attention.shards == attention.num_kv_heads
        and cache.head_dim == attention.head_dim
        and cache.v_head_dim == attention.v_head_dim
        and attention.context_parallel is None
        and attention.backend != "math"
        and attention._plain
        and (not attention.training or attention.dropout == 0.0)
        # Autocast on any device sends the call to the full path: one C call, where
        # torch.is_autocast_enabled(device_type) would parse a string and cost 3x more.
        and not torch.is_grad_enabled()
        and not torch._C._is_any_autocast_enabled()
    )


def run(module: MultiHeadAttention, query: Tensor, cache: KVCache) -> Tensor:
    """`MultiHeadAttention.forward` for a call `applies` said yes to.

    Shape:
        query: `(b, 1, h)`; output: `(b, 1, h)`.
    """
    # Submodules straight from _modules: nn.Module.__getattr__ is a Python call per lookup.
    modules = cast(dict[str, nn.Module], module._modules)
    projections = modules["q_proj"], modules["k_proj"], modules["v_proj"], modules["out_proj"]
    bare = all(map(_is_bare_linear, projections)) and not _global_hooks()
    project = _linear if bare else nn.Module.__call__
    q, k, v = project(projections[0], query), project(projections[1], query), project(projections[2], query)
    context = _attend(cast("Attention", modules["attention"]), q, k, v, cache)
    return project(projections[3], context)


def _attend(attention: Attention, query: Tensor, key: Tensor, value: Tensor, cache: KVCache) -> Tensor:
    """`mha._dispatch.run` for one token per sample through a cache, in eager mode.

    What `run` does for this call, with nothing left to decide: one
    position needs no mask, and a table row holds its rotary angles.

    Shape:
        query: `(b, 1, n_h * d)`; key: `(b, 1, n_kv * d)`; value: `(b, 1, n_kv * d_v)`; output: `(b, 1, n_h * d_v)`.
    """
    b, d = query.shape[0], attention.head_dim
    q, k = query.reshape(b, -1, d), key.reshape(b, -1, d)  # (b, n_h, d), (b, n_kv, d)
    if attention.positional is not None:
        angles = attention.positional.angles_at(cache.length, 1, q.dtype, q.device)  # (1, d/2)
        n_h = q.shape[1]
        # One rotation of both: in 16 bits each rotation also converts to float32 and back.
        qk = attention.positional.rotate(torch.cat((q, k), dim=1), angles)
        q, k = qk[:, :n_h], qk[:, n_h:]
    keys, values = cache._write_token(k, value.reshape(b, -1, attention.v_head_dim))
    return attend_one_query(q, keys, values, attention.scale).view(b, 1, -1)


def _is_bare_linear(module: nn.Module) -> bool:
    """Whether calling `module` is exactly `F.linear` on its weight and bias.

    True for a plain `nn.Linear` without hooks of its own and without a
    compiled forward: a decoding step then skips `nn.Module.__call__`, whose
    Python costs as much as the kernel at one token (`nn.MultiheadAttention`
    never calls its projections as modules at all).
    """
    return (
        type(module) is nn.Linear
        and module._compiled_call_impl is None
        and not (
            module._forward_hooks or module._forward_pre_hooks or module._backward_hooks or module._backward_pre_hooks
        )
    )


def _global_hooks() -> bool:
    """Whether hooks registered for every module exist (`nn.modules.module.register_module_forward_hook`...)."""
    return bool(
        module_hooks._global_forward_hooks
        or module_hooks._global_forward_pre_hooks
        or module_hooks._global_backward_hooks
        or module_hooks._global_backward_pre_hooks
    )


def _linear(module: nn.Module, x: Tensor) -> Tensor:
    """A bare `nn.Linear`'s output (see `_is_bare_linear`), read from its parameters."""
    parameters = module._parameters
    return nn.functional.linear(x, parameters["weight"], parameters["bias"])  # type: ignore[arg-type]
