"""Shared test helpers: an independent float64 reference, tolerances, a free port.

Imported as `from helpers import ...` (pyproject.toml puts tests/ on the path,
so this works in every pytest --import-mode).

Sizes in tests differ in every dimension (2, 3, 5, 7, ...) so that a swapped
axis cannot pass by accident.
"""

from __future__ import annotations

import math
import socket

import torch

# Per-dtype tolerances (atol = rtol), in the spirit of Hugging Face's
# eager-vs-SDPA tests.
TOLERANCE = {
    torch.float64: 1e-10,
    torch.float32: 1e-5,
    torch.float16: 5e-3,
    torch.bfloat16: 3e-2,
}


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype | None = None):
    tol = TOLERANCE[dtype or actual.dtype]
    torch.testing.assert_close(actual.to(expected.dtype), expected, atol=tol, rtol=tol)


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
