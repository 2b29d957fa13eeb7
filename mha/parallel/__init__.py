"""Attention over more than one device, on `torch.distributed`.

Two ways to split one attention layer, which compose:

* **tensor parallelism** ([`mha.parallel.tensor`][mha.parallel.tensor]):
  each rank holds some of the *heads*, with PyTorch's own DTensor plan
  ([`plan`][mha.parallel.tensor.plan], [`parallelize`][mha.parallel.tensor.parallelize]);
* **context parallelism** ([`mha.parallel.context`][mha.parallel.context]):
  each rank holds part of the *sequence*, and key/value shards travel around
  a ring ([`context_parallel`][mha.parallel.context.context_parallel],
  [`shard_sequence`][mha.parallel.context.shard_sequence],
  [`unshard_sequence`][mha.parallel.context.unshard_sequence]).

Everything is importable from here: `from mha.parallel import parallelize, context_parallel`.
The core package knows nothing of this one: `parallelize` sets an
`Attention`'s `shards`, `context_parallel` its `context_parallel` layout.
"""

from mha.parallel.context import ContextParallel, context_parallel, shard_sequence, unshard_sequence
from mha.parallel.tensor import parallelize, plan

__all__ = [
    "plan",
    "parallelize",
    "ContextParallel",
    "context_parallel",
    "shard_sequence",
    "unshard_sequence",
]
