"""Shared test helpers: an independent float64 reference, named tolerances, a free port.

Imported as `from helpers import ...` (pyproject.toml puts tests/ on the path,
so this works in every pytest --import-mode).

Sizes in tests differ in every dimension (2, 3, 5, 7, ...) so that a swapped
axis cannot pass by accident.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Callable
from typing import Any, NamedTuple

import torch


class Tolerance(NamedTuple):
    """How far apart two tensors may be: |actual - expected| <= atol + rtol * |expected|."""

    atol: float
    rtol: float

    def times(self, factor: float) -> Tolerance:
        """This tolerance widened `factor` times (a gradient carries the forward's error further)."""
        return Tolerance(self.atol * factor, self.rtol * factor)


# Named for what separates the two sides; per dtype in the spirit of Hugging
# Face's eager-vs-SDPA table (float32 ~1e-5, float16 ~5e-3, bfloat16 ~1e-2).
EXACT = Tolerance(0.0, 0.0)  # the same operations on the same numbers: bit for bit
FLOAT64 = Tolerance(1e-10, 1e-10)  # float64, sums in another order (or a float64 reference)
FLOAT32 = Tolerance(1e-5, 1e-5)  # float32 against float64, or two float32 kernels
FLOAT32_FEW_OPS = Tolerance(1e-6, 1e-6)  # float32 a few roundings apart: a rotation, a projection
FLOAT32_COMPOUNDED = Tolerance(1e-4, 1e-4)  # float32 errors compounding: gradients after steps, GPU kernels
FLOAT16 = Tolerance(5e-3, 5e-3)
BFLOAT16 = Tolerance(3e-2, 3e-2)
TOLERANCE = {torch.float64: FLOAT64, torch.float32: FLOAT32, torch.float16: FLOAT16, torch.bfloat16: BFLOAT16}


def assert_close(
    actual: Any, expected: Any, tol: Tolerance | torch.dtype | None = None, *, msg: str | None = None, **options: Any
) -> None:
    """Whole tensors (or sequences of them) equal within a named tolerance.

    Args:
        actual: what the code under test gave; cast to float64 when `expected`
            is a float64 reference, else its dtype must be `expected`'s.
        expected: the reference.
        tol: a named `Tolerance`, or a dtype whose tolerance applies (the
            precision the result was computed in); default: `actual`'s dtype.
        msg: added to the failure message (which inputs failed).
        options: passed to `torch.testing.assert_close` (`equal_nan=True`, ...).
    """
    if not isinstance(tol, Tolerance):
        tol = TOLERANCE[tol or actual.dtype]
    if isinstance(actual, torch.Tensor) and isinstance(expected, torch.Tensor) and expected.dtype == torch.float64:
        actual = actual.to(expected.dtype)  # against a float64 reference; otherwise the dtypes must match
    # A message adds to torch's (which says where and by how much), not replaces it.
    details = None if msg is None else (lambda text: f"{msg}: {text}")
    torch.testing.assert_close(actual, expected, atol=tol.atol, rtol=tol.rtol, msg=details, **options)


def reference_attention(q, k, v, allowed=None, scale=None):
    """Attention in float64 with explicit loops over batch and heads.

    Written independently of ``mha.functional``: q (b, n_h, s_q, d),
    k/v (b, n_kv, s_kv, d), ``allowed`` a bool (b, n_h, s_q, s_kv) tensor or
    None. A row with nothing allowed gives zero weights and zero context.
    """
    q, k, v = q.double(), k.double(), v.double()
    b, n_h, s_q, d = q.shape
    n_kv, s_kv = k.shape[1], k.shape[2]
    scale = 1 / math.sqrt(d) if scale is None else scale
    weights = torch.zeros(b, n_h, s_q, s_kv, dtype=torch.float64)
    context = torch.zeros(b, n_h, s_q, v.shape[-1], dtype=torch.float64)
    for i in range(b):
        for h in range(n_h):
            kv_head = h // (n_h // n_kv)
            scores = q[i, h] @ k[i, kv_head].T * scale  # (s_q, s_kv)
            for r in range(s_q):
                ok = torch.ones(s_kv, dtype=torch.bool) if allowed is None else allowed[i, h, r]
                if not ok.any():
                    continue
                e = torch.exp(scores[r] - scores[r][ok].max()) * ok
                weights[i, h, r] = e / e.sum()
            context[i, h] = weights[i, h] @ v[i, kv_head]
    return context, weights


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prefill_then_decode(
    layer: Callable[..., torch.Tensor], x: torch.Tensor, prefill: int, cache: Any, *, mask: Any = None, **first: Any
) -> torch.Tensor:
    """`x[:, :prefill]` through `layer` with `cache`, then the rest one token at a time.

    Returns the outputs concatenated along the sequence: what one causal pass
    over `x` gives. `mask` goes to every call, `first` (`token_mask=...`) to
    the prefill only.
    """
    outs = [layer(x[:, :prefill], cache=cache, mask=mask, **first)]
    outs += [layer(x[:, i : i + 1], cache=cache, mask=mask) for i in range(prefill, x.shape[1])]
    return torch.cat(outs, dim=1)


def run_on_ranks(
    checks: Callable[[Any], None], *, world_size: int = 2, device: str = "cpu", threads: int | None = None
) -> None:
    """`checks(mesh)` on `world_size` processes, each with a 1-D device mesh over all of them.

    CPU ranks talk over gloo, CUDA ranks (one GPU each) over NCCL. An assertion
    error on any rank fails the calling test (`mp.spawn` re-raises it);
    `checks` must be a module-level function (the processes import it).
    """
    import torch.multiprocessing as mp

    mp.spawn(_rank, args=(checks, world_size, device, free_port(), threads), nprocs=world_size, join=True)


def _rank(
    rank: int, checks: Callable[[Any], None], world_size: int, device: str, port: int, threads: int | None
) -> None:
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if threads is not None:
        torch.set_num_threads(threads)
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world_size)
    checks(init_device_mesh(device, (world_size,)))
    dist.barrier()  # a rank that tears gloo down while the other still talks aborts both
    dist.destroy_process_group()
    # Gloo's worker threads can still hold tensors when the interpreter
    # finalises, which sometimes aborts the process after every check passed
    # ("terminate called without an active exception"). Skip finalisation.
    os._exit(0)


def split(x: torch.Tensor, d: int) -> torch.Tensor:
    """(b, s, n * d) -> (b, n, s, d)."""
    return x.unflatten(-1, (-1, d)).transpose(1, 2)


def merge(x: torch.Tensor) -> torch.Tensor:
    """(b, n, s, d) -> (b, s, n * d)."""
    return x.transpose(1, 2).flatten(2)


def randomize_biases(module: torch.nn.Module) -> torch.nn.Module:
    """Nonzero biases (PyTorch initialises some to zero), so that a dropped bias would show."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            if "bias" in name:
                p.uniform_(-0.5, 0.5)
    return module


def require(missing: list[str], *, module_level: bool = False) -> None:
    """Fail under CI (where .ci/setup installs everything), else skip, when anything is `missing`."""
    import os

    import pytest

    if not missing:
        return
    if os.environ.get("CI"):
        pytest.fail(f"{', '.join(missing)} missing: bash .ci/setup installs them", pytrace=False)
    pytest.skip(f"{', '.join(missing)} not installed (run bash .ci/setup)", allow_module_level=module_level)


def missing_modules(*names: str) -> list[str]:
    """The importable-module names among `names` that are not installed."""
    import importlib.util

    return [name for name in names if importlib.util.find_spec(name) is None]


_DYNAMO_KEEPS_TEXT: list[bool] = []


def under_fullgraph(message: str) -> str:
    """What `pytest.raises(Unsupported, match=...)` can expect when our error is raised under `fullgraph=True`.

    Dynamo reports it as `Unsupported` with our message in its text on newer
    torch (2.13); older releases (2.5, 2.11) say only "Observed exception" and
    keep the message in a debug context. Probed once, not guessed from the
    version.
    """
    if not _DYNAMO_KEEPS_TEXT:
        text = "-".join(["mha", "probe"])  # not literally in the source line Dynamo quotes

        def probe(x: torch.Tensor) -> torch.Tensor:
            raise ValueError(text)

        try:
            torch.compile(probe, backend="eager", fullgraph=True)(torch.zeros(1))
        except Exception as error:  # whatever Dynamo raises, we read its text
            _DYNAMO_KEEPS_TEXT.append(text in str(error))
        else:
            _DYNAMO_KEEPS_TEXT.append(False)
    return message if _DYNAMO_KEEPS_TEXT[0] else "Observed exception"
