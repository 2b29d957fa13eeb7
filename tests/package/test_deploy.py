"""Where models run: torch.compile with the default backend, torch.export with
dynamic shapes, and ONNX Runtime. The cheaper compile checks (every option,
no recompiles, errors kept) are in test_attention.py."""

from __future__ import annotations

import pytest
import torch
from torch.export import Dim, export

from helpers import FLOAT32, FLOAT32_FEW_OPS, assert_close, missing_modules, require
from mha import MultiHeadAttention


class SelfAttention(torch.nn.Module):
    """Self-attention with a mask input, for exporters that take positional tensors."""

    def __init__(self, m: MultiHeadAttention, **options) -> None:
        super().__init__()
        self.m, self.options = m, options

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.m(x, mask=mask, **self.options)


class CrossAttention(SelfAttention):
    def forward(self, q: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.m(q, kv, kv, mask=mask, **self.options)


def _mask(b: int, s_q: int, s_kv: int) -> torch.Tensor:
    mask = torch.rand(b, 1, s_q, s_kv) > 0.3
    mask[..., 0] = True
    return mask


def test_default_inductor_backend_compiles_once_for_many_shapes():
    from torch._dynamo.testing import CompileCounterWithBackend

    m = MultiHeadAttention(32, 4, num_kv_heads=2).eval()
    counter = CompileCounterWithBackend("inductor")
    step = torch.compile(m, backend=counter, fullgraph=True, dynamic=True)
    torch._dynamo.reset()
    with torch.no_grad():
        for s in (3, 5, 8, 11):
            x = torch.randn(2 + s % 2, s, 32)
            assert_close(step(x, is_causal=True), m(x, is_causal=True), FLOAT32)
    assert counter.frame_count <= 2


@pytest.mark.parametrize("backend", ["auto", "math"])
@pytest.mark.parametrize("is_causal", [False, True])
def test_export_with_dynamic_batch_and_length_matches_eager_at_other_shapes(backend, is_causal):
    m = MultiHeadAttention(32, 4, num_kv_heads=2, backend=backend).eval()
    model = SelfAttention(m, is_causal=is_causal)
    b, s = Dim("b", min=1, max=64), Dim("s", min=2, max=512)
    program = export(model, (torch.randn(2, 5, 32), _mask(2, 5, 5)), dynamic_shapes=({0: b, 1: s}, {0: b, 2: s, 3: s}))
    for shape in ((3, 9), (1, 17)):
        x, mask = torch.randn(*shape, 32), _mask(shape[0], shape[1], shape[1])
        assert_close(program.module()(x, mask), model(x, mask), FLOAT32_FEW_OPS)


@pytest.mark.parametrize(
    ("cross", "num_kv_heads", "backend", "is_causal"),
    [
        (False, 2, "auto", True),  # self-attention, grouped-query, causal + mask, fused path
        (True, 1, "math", False),  # cross-attention, multi-query, mask, math path
    ],
    ids=["self-gqa-causal", "cross-mqa-math"],
)
def test_onnx_export_runs_in_onnxruntime_at_other_shapes(tmp_path, cross, num_kv_heads, backend, is_causal):
    require(missing_modules("onnx", "onnxscript", "onnxruntime"))
    import onnxruntime

    m = MultiHeadAttention(32, 4, num_kv_heads=num_kv_heads, backend=backend).eval()
    b, s_q, s_kv = Dim("b", min=1, max=64), Dim("s_q", min=2, max=256), Dim("s_kv", min=2, max=256)
    if cross:
        model: SelfAttention = CrossAttention(m, is_causal=is_causal)
        example = (torch.randn(2, 5, 32), torch.randn(2, 7, 32), _mask(2, 5, 7))
        dynamic = ({0: b, 1: s_q}, {0: b, 1: s_kv}, {0: b, 2: s_q, 3: s_kv})
        other = (torch.randn(3, 6, 32), torch.randn(3, 11, 32), _mask(3, 6, 11))
    else:
        model = SelfAttention(m, is_causal=is_causal)
        example = (torch.randn(2, 5, 32), _mask(2, 5, 5))
        dynamic = ({0: b, 1: s_q}, {0: b, 2: s_q, 3: s_q})
        other = (torch.randn(3, 9, 32), _mask(3, 9, 9))
    program = torch.onnx.export(model, example, dynamo=True, dynamic_shapes=dynamic)
    path = tmp_path / "attention.onnx"
    program.save(str(path))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: t.numpy() for i, t in zip(session.get_inputs(), other, strict=True)}
    (out,) = session.run(None, feed)
    assert_close(torch.from_numpy(out), model(*other), FLOAT32)
