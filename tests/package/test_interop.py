"""from_torch / to_torch, the drop-in module, and replace_torch_attention."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import EXACT, FLOAT32, FLOAT32_COMPOUNDED, FLOAT32_FEW_OPS, FLOAT64, assert_close, randomize_biases
from mha import MultiHeadAttention, TorchMultiheadAttention, from_torch, replace_torch_attention, to_torch


@pytest.mark.parametrize("packed", [True, False])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("batch_first", [True, False])
def test_from_torch_then_to_torch_round_trip(packed, bias, batch_first):
    kdim, vdim = (None, None) if packed else (7, 9)
    theirs = randomize_biases(
        nn.MultiheadAttention(12, 3, bias=bias, kdim=kdim, vdim=vdim, batch_first=batch_first)
    ).eval()
    assert theirs._qkv_same_embed_dim is packed
    ours = from_torch(theirs)
    q = torch.randn(2, 5, 12)
    k, v = torch.randn(2, 6, kdim or 12), torch.randn(2, 6, vdim or 12)  # s_kv=6: unlike d=4
    t = (lambda x: x) if batch_first else (lambda x: x.transpose(0, 1))
    expected, expected_w = theirs(t(q), t(k), t(v), average_attn_weights=False)
    out, weights = ours(q, k, v, need_weights=True)
    assert_close(out, t(expected), FLOAT32)
    assert_close(weights, expected_w, FLOAT32)

    back = to_torch(ours, batch_first=batch_first)
    assert back._qkv_same_embed_dim is packed
    for name, p in theirs.state_dict().items():
        assert_close(back.state_dict()[name], p, EXACT)


def test_from_torch_copies_training_mode_and_dropout():
    theirs = nn.MultiheadAttention(8, 2, dropout=0.25)
    ours = from_torch(theirs)
    assert ours.training and ours.attention.dropout == 0.25
    assert not from_torch(theirs.eval()).training


def test_refusals_name_what_is_unsupported():
    with pytest.raises(ValueError, match=r"add_bias_kv=True.*got bias_k of shape \(1, 1, 8\)"):
        from_torch(nn.MultiheadAttention(8, 2, add_bias_kv=True))
    with pytest.raises(ValueError, match=r"add_zero_attn=True"):
        from_torch(nn.MultiheadAttention(8, 2, add_zero_attn=True))
    with pytest.raises(
        TypeError, match=r"module must be a torch.nn.MultiheadAttention or a TorchMultiheadAttention, got Linear"
    ):
        from_torch(nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"no equivalent of num_kv_heads=1 \(expected num_kv_heads=2\)"):
        to_torch(MultiHeadAttention(8, 2, num_kv_heads=1))
    with pytest.raises(ValueError, match=r"no equivalent of scale=0.5 \(expected scale=None\)"):
        to_torch(MultiHeadAttention(8, 2, scale=0.5))


@pytest.mark.parametrize("batch_first", [True, False])
def test_drop_in_matches_torch_with_all_mask_kinds(batch_first):
    theirs = randomize_biases(nn.MultiheadAttention(12, 3, batch_first=batch_first)).eval()
    ours = TorchMultiheadAttention.from_torch(theirs)
    shape = (2, 5, 12) if batch_first else (5, 2, 12)
    x = torch.randn(shape)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2])
    causal = nn.Transformer.generate_square_subsequent_mask(5)  # float, -inf above the diagonal
    per_head = torch.rand(2 * 3, 5, 5) < 0.3
    per_head[..., 0] = False
    cases = [
        {},
        {"key_padding_mask": pad},
        {"attn_mask": causal, "is_causal": True},
        {"attn_mask": causal.isinf(), "key_padding_mask": pad},
        {"attn_mask": per_head, "average_attn_weights": False},
        {"need_weights": False, "key_padding_mask": pad},
    ]
    for kwargs in cases:
        a, wa = ours(x, x, x, **kwargs)
        b, wb = theirs(x, x, x, **kwargs)
        assert_close(a, b, FLOAT32, msg=str(kwargs))
        if wb is None:
            assert wa is None
        else:
            assert_close(wa, wb, FLOAT32, msg=str(kwargs))


def test_drop_in_unbatched_input():
    theirs = nn.MultiheadAttention(12, 3).eval()
    ours = TorchMultiheadAttention.from_torch(theirs)
    x = torch.randn(5, 12)
    pad = torch.tensor([False, False, False, True, True])
    a, wa = ours(x, x, x, key_padding_mask=pad)
    b, wb = theirs(x, x, x, key_padding_mask=pad)
    assert_close(a, b, FLOAT32)
    assert_close(wa, wb, FLOAT32)


def _transformer(dropout):
    return nn.Transformer(
        d_model=16,
        nhead=4,
        num_encoder_layers=2,
        num_decoder_layers=2,
        dim_feedforward=32,
        dropout=dropout,
    )


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_replace_torch_attention_in_transformer(mode):
    model = _transformer(dropout=0.0).train(mode == "train")
    src, tgt = torch.randn(7, 2, 16), torch.randn(5, 2, 16)  # (s, b, E)
    src_pad = torch.tensor([[False] * 7, [False] * 4 + [True] * 3])
    tgt_mask = nn.Transformer.generate_square_subsequent_mask(5)
    kwargs = dict(src_key_padding_mask=src_pad, memory_key_padding_mask=src_pad, tgt_mask=tgt_mask, tgt_is_causal=True)
    expected = model(src, tgt, **kwargs)
    replace_torch_attention(model)
    swapped = [m for m in model.modules() if isinstance(m, TorchMultiheadAttention)]
    assert len(swapped) == 2 + 2 * 2  # encoder self, decoder self + cross
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert_close(model(src, tgt, **kwargs), expected, FLOAT32)

    # The swapped modules really run: changing their weights changes the output.
    with torch.no_grad():
        for m in swapped:
            m.in_proj_weight.chunk(3)[2].mul_(2)  # the value projection
    assert not torch.allclose(model(src, tgt, **kwargs), expected, atol=1e-3)


def test_encoder_fast_path_is_not_silently_used():
    layer = nn.TransformerEncoderLayer(16, 4, dim_feedforward=32, batch_first=True)
    encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=True).eval()
    x = torch.randn(2, 6, 16)
    pad = torch.tensor([[False] * 6, [False] * 2 + [True] * 4])
    with torch.inference_mode():
        expected = encoder(x, src_key_padding_mask=pad)
        replace_torch_attention(encoder)
        assert encoder.use_nested_tensor is False
        out = encoder(x, src_key_padding_mask=pad)
    # PyTorch's nested fast path returns zeros at padded positions; compare the real ones.
    real = ~pad
    assert_close(out[real], expected[real], FLOAT32)


def test_replace_on_a_bare_module_and_errors():
    theirs = nn.MultiheadAttention(8, 2)
    assert isinstance(replace_torch_attention(theirs), TorchMultiheadAttention)
    with pytest.raises(TypeError, match=r"model must be a torch.nn.Module, got str"):
        replace_torch_attention("model")


def _encoder(seed: int) -> nn.TransformerEncoder:
    torch.manual_seed(seed)
    layer = nn.TransformerEncoderLayer(12, 3, dim_feedforward=20, dropout=0.0, batch_first=True)
    return nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False).eval()


def test_stock_checkpoints_load_into_the_replaced_model_and_back():
    x = torch.randn(2, 5, 12)
    stock = randomize_biases(_encoder(0))
    expected = stock(x)
    replaced = replace_torch_attention(_encoder(1))  # other weights, then the checkpoint
    assert sorted(replaced.state_dict()) == sorted(stock.state_dict())
    replaced.load_state_dict(stock.state_dict())
    assert_close(replaced(x), expected, FLOAT32)
    # ... and the replaced model's checkpoint loads into a stock one.
    fresh = _encoder(2)
    fresh.load_state_dict(replaced.state_dict())
    assert_close(fresh(x), expected, FLOAT32)


@pytest.mark.parametrize("bias", [True, False])
def test_separate_kdim_vdim_checkpoints_load_both_ways(bias):
    stock = randomize_biases(nn.MultiheadAttention(12, 3, bias=bias, kdim=7, vdim=9, batch_first=True)).eval()
    ours = TorchMultiheadAttention(12, 3, bias=bias, kdim=7, vdim=9, batch_first=True).eval()
    assert sorted(ours.state_dict()) == sorted(stock.state_dict())
    ours.load_state_dict(stock.state_dict())
    q, k, v = torch.randn(2, 5, 12), torch.randn(2, 6, 7), torch.randn(2, 6, 9)
    assert_close(ours(q, k, v)[0], stock(q, k, v)[0], FLOAT32)
    back = nn.MultiheadAttention(12, 3, bias=bias, kdim=7, vdim=9, batch_first=True).eval()
    back.load_state_dict(ours.state_dict())
    assert_close(back(q, k, v)[0], stock(q, k, v)[0], FLOAT32)


def test_assigning_torch_weights_works_as_on_stock():
    stock = nn.MultiheadAttention(12, 3, batch_first=True).eval()
    ours = TorchMultiheadAttention.from_torch(stock).eval()
    w, b = torch.randn(36, 12), torch.randn(36)
    stock.in_proj_weight = nn.Parameter(w.clone())
    stock.in_proj_bias = nn.Parameter(b.clone())
    ours.in_proj_weight = nn.Parameter(w.clone())
    ours.in_proj_bias = nn.Parameter(b.clone())
    x = torch.randn(2, 5, 12)
    assert_close(ours(x, x, x)[0], stock(x, x, x)[0], FLOAT32)
    torch.testing.assert_close(ours.in_proj_weight, w)
    with pytest.raises(ValueError, match=r"in_proj_weight must have shape \(36, 12\), got \(12, 12\)"):
        ours.in_proj_weight = nn.Parameter(torch.randn(12, 12))
    with pytest.raises(ValueError, match=r"this module has no q_proj_weight"):
        ours.q_proj_weight = nn.Parameter(torch.randn(12, 12))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"attn_mask": torch.zeros(3, 5, 5, dtype=torch.bool)},
            r"attn_mask must have shape \(L, S\) = \(5, 5\) or \(b \* num_heads, L, S\) = \(6, 5, 5\).*got \(3, 5, 5\)",
        ),
        ({"attn_mask": torch.zeros(1, 5, dtype=torch.bool)}, r"attn_mask must have shape .* got \(1, 5\)"),
        ({"attn_mask": torch.zeros(5, 1, dtype=torch.bool)}, r"attn_mask must have shape .* got \(5, 1\)"),
        (
            {"key_padding_mask": torch.zeros(1, 5, dtype=torch.bool)},
            r"key_padding_mask must have shape \(b, S\) = \(2, 5\).*got \(1, 5\)",
        ),
        (
            {"key_padding_mask": torch.zeros(2, 1, dtype=torch.bool)},
            r"key_padding_mask must have shape \(b, S\) = \(2, 5\).*got \(2, 1\)",
        ),
    ],
)
def test_drop_in_rejects_the_masks_pytorch_rejects(kwargs, match):
    stock = nn.MultiheadAttention(12, 3, batch_first=True)
    ours = TorchMultiheadAttention.from_torch(stock)
    x = torch.randn(2, 5, 12)
    with pytest.raises((RuntimeError, AssertionError)):
        stock(x, x, x, **kwargs)
    with pytest.raises(ValueError, match=match):
        ours(x, x, x, **kwargs)


@pytest.mark.parametrize("name", ["attn_mask", "key_padding_mask"])
@pytest.mark.parametrize("dtype", [torch.long, torch.uint8])
def test_drop_in_refuses_integer_masks_in_pytorchs_words(name, dtype):
    stock = nn.MultiheadAttention(12, 3, batch_first=True)
    ours = TorchMultiheadAttention.from_torch(stock)
    x = torch.randn(2, 5, 12)
    mask = torch.zeros((5, 5) if name == "attn_mask" else (2, 5), dtype=dtype)
    with pytest.raises((RuntimeError, AssertionError)):  # PyTorch takes bool and float masks only
        stock(x, x, x, **{name: mask})
    match = rf"{name} must be a bool tensor \(PyTorch's convention: True = not allowed to attend\) or a float"
    with pytest.raises(TypeError, match=rf"{match} tensor \(added to the scores\), got dtype {dtype}"):
        ours(x, x, x, **{name: mask})


def test_replacing_keeps_the_hooks():
    layer = nn.TransformerEncoderLayer(12, 3, dim_feedforward=20, batch_first=True).eval()
    seen = []
    layer.self_attn.register_forward_hook(lambda module, args, output: seen.append(output[0].shape))
    layer.self_attn.register_forward_pre_hook(lambda module, args: seen.append("pre"))
    replace_torch_attention(layer)
    layer(torch.randn(2, 5, 12))
    assert isinstance(layer.self_attn, TorchMultiheadAttention)
    assert seen == ["pre", torch.Size([2, 5, 12])]


def test_nested_inputs_with_weights_get_a_clear_error():
    ours = TorchMultiheadAttention(12, 3, batch_first=True).eval()
    x = torch.nested.nested_tensor([torch.randn(3, 12), torch.randn(5, 12)], layout=torch.jagged)
    with pytest.raises(ValueError, match=r"nested \(jagged\) inputs cannot return attention weights"):
        ours(x, x, x)
    assert ours(x, x, x, need_weights=False)[0].is_nested


def test_a_fully_masked_query_outputs_the_output_bias():
    """What the docstring promises: a zero context, so the output is out_proj.bias."""
    ours = randomize_biases(TorchMultiheadAttention(12, 3, batch_first=True)).eval()
    x = torch.randn(2, 5, 12)
    blocked = torch.zeros(5, 5, dtype=torch.bool)
    blocked[1] = True  # query 1 may attend to nothing
    out, weights = ours(x, x, x, attn_mask=blocked)
    torch.testing.assert_close(out[:, 1], ours.out_proj.bias.expand(2, 12))
    assert not weights[:, 1].any()


def test_torchscript_is_refused_with_a_clear_error():
    model = replace_torch_attention(nn.TransformerEncoderLayer(12, 3, dim_feedforward=20, batch_first=True))
    with pytest.raises(TypeError, match=r"cannot be compiled with TorchScript .* use torch.compile or torch.export"):
        torch.jit.script(model)


# Every constructor combination nn.MultiheadAttention takes (dtype and device aside, tested below).
_COMBINATIONS = [
    {
        "bias": bias,
        "add_bias_kv": bias_kv,
        "add_zero_attn": zero_attn,
        "kdim": kdim,
        "vdim": vdim,
        "batch_first": batch_first,
    }
    for bias in (True, False)
    for bias_kv in (False, True)
    for zero_attn in (False, True)
    for kdim, vdim in ((None, None), (7, 9), (12, 5))
    for batch_first in (False, True)
]


def _layout(module):
    return [(name, tuple(p.shape), p.dtype, p.device) for name, p in module.named_parameters()]


@pytest.mark.parametrize("kwargs", _COMBINATIONS, ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()))
def test_parameters_are_pytorchs_names_shapes_and_order(kwargs):
    torch.manual_seed(3)
    theirs = nn.MultiheadAttention(12, 3, **kwargs)
    torch.manual_seed(3)
    ours = TorchMultiheadAttention(12, 3, **kwargs)
    assert _layout(ours) == _layout(theirs)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    # Same initialisation, in the same order: the same seed gives the same weights.
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters(), strict=True):
        assert_close(p, q, EXACT, msg=name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_parameters_take_dtype_and_device(dtype):
    for kdim in (None, 7):
        theirs = nn.MultiheadAttention(12, 3, kdim=kdim, device="cpu", dtype=dtype)
        ours = TorchMultiheadAttention(12, 3, kdim=kdim, device="cpu", dtype=dtype)
        assert _layout(ours) == _layout(theirs)


@pytest.mark.parametrize(
    "kwargs",
    [kw for kw in _COMBINATIONS if kw["bias"]],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items() if k != "bias"),
)
def test_every_combination_computes_what_pytorch_computes(kwargs):
    """Masks of both kinds, weights per head; add_bias_kv and add_zero_attn included."""
    theirs = nn.MultiheadAttention(12, 3, **kwargs).double().eval()
    with torch.no_grad():
        for p in theirs.parameters():
            p.normal_()  # biases and bias_k/bias_v too, which PyTorch initialises to zero / small
    ours = TorchMultiheadAttention.from_torch(theirs)
    b, s_q, s_kv = 2, 5, 6
    lay = (lambda *s: s) if kwargs["batch_first"] else (lambda b, s, e: (s, b, e))
    q = torch.randn(*lay(b, s_q, 12), dtype=torch.float64)
    k = torch.randn(*lay(b, s_kv, kwargs["kdim"] or 12), dtype=torch.float64)
    v = torch.randn(*lay(b, s_kv, kwargs["vdim"] or 12), dtype=torch.float64)
    pad = torch.tensor([[False] * 6, [False] * 4 + [True] * 2])
    blocked = torch.rand(b * 3, s_q, s_kv) < 0.3
    blocked[..., 0] = False  # every query sees a key: PyTorch gives NaN otherwise
    for masks in ({}, {"key_padding_mask": pad}, {"attn_mask": blocked, "key_padding_mask": pad}):
        expected, expected_w = theirs(q, k, v, average_attn_weights=False, **masks)
        out, weights = ours(q, k, v, average_attn_weights=False, **masks)
        assert_close(out, expected, FLOAT64)
        assert_close(weights, expected_w, FLOAT64)


@pytest.mark.parametrize("kdim", [None, 7])
def test_initialising_and_optimising_by_iterating_parameters_is_as_with_pytorch(kdim):
    """What PyTorch's own tests and user code do: set every parameter in turn, then train on parameters()."""
    theirs = nn.MultiheadAttention(12, 3, kdim=kdim, vdim=kdim, add_bias_kv=True, batch_first=True)
    ours = TorchMultiheadAttention(12, 3, kdim=kdim, vdim=kdim, add_bias_kv=True, batch_first=True)
    for module in (theirs, ours):
        torch.manual_seed(5)
        for p in module.parameters():
            nn.init.uniform_(p, -0.5, 0.5)
    q, kv = torch.randn(2, 5, 12), torch.randn(2, 7, kdim or 12)
    pad = torch.tensor([[False] * 7, [False] * 3 + [True] * 4])
    optimizers = [torch.optim.SGD(m.parameters(), lr=0.1) for m in (theirs, ours)]
    for step in range(2):  # the second step runs on the weights the first one updated
        results = []
        for module, optimizer in zip((theirs, ours), optimizers, strict=True):
            optimizer.zero_grad()
            x = q if kdim else kv[:, :5]
            out, _ = module(
                x, x if kdim is None else kv, x if kdim is None else kv, key_padding_mask=None if kdim is None else pad
            )
            out.square().sum().backward()
            results.append((out, [p.grad.clone() for p in module.parameters()]))
            optimizer.step()
        (out_t, grads_t), (out_o, grads_o) = results
        assert_close(out_o, out_t, FLOAT32, msg=f"step {step}")
        for (name, _), g_o, g_t in zip(ours.named_parameters(), grads_o, grads_t, strict=True):
            assert_close(g_o, g_t, FLOAT32_COMPOUNDED, msg=f"step {step}: {name}.grad")


def test_the_drop_in_converts_to_and_from_multi_head_attention_exactly():
    stock = randomize_biases(nn.MultiheadAttention(12, 3, batch_first=True)).eval()
    drop_in = TorchMultiheadAttention.from_torch(stock)
    ours = from_torch(drop_in)  # the drop-in has PyTorch's parameters, so from_torch takes it too
    for name, p in to_torch(ours).state_dict().items():
        assert_close(p, stock.state_dict()[name], EXACT)
    wrapped = TorchMultiheadAttention.from_mha(ours, batch_first=True).eval()
    x = torch.randn(2, 5, 12)
    assert_close(wrapped(x, x, x)[0], ours(x), FLOAT32_FEW_OPS)
    with pytest.raises(TypeError, match=r"embed_dim must be an int, got MultiHeadAttention"):
        TorchMultiheadAttention(ours, 3)  # from_mha wraps one
    with pytest.raises(ValueError, match=r"embed_dim=12 must be divisible by num_heads=5"):
        TorchMultiheadAttention(12, 5)
    with pytest.raises(ValueError, match=r"add_bias_kv=True"):
        from_torch(TorchMultiheadAttention(12, 3, add_bias_kv=True))


def test_causal_without_a_mask_also_sees_the_appended_keys():
    """is_causal=True without attn_mask (PyTorch raises) equals PyTorch given the causal mask."""
    stock = randomize_biases(nn.MultiheadAttention(12, 3, add_bias_kv=True, add_zero_attn=True, batch_first=True))
    ours = TorchMultiheadAttention.from_torch(stock.eval())
    x = torch.randn(2, 5, 12)
    causal = nn.Transformer.generate_square_subsequent_mask(5)
    expected, _ = stock(x, x, x, attn_mask=causal)
    assert_close(ours(x, x, x, is_causal=True)[0], expected, FLOAT32)


def test_drop_in_input_errors_name_the_argument():
    ours = TorchMultiheadAttention(12, 3, kdim=7, vdim=9)  # batch_first=False: (s, b, E)
    q, k, v = torch.randn(5, 2, 12), torch.randn(6, 2, 7), torch.randn(6, 2, 9)
    with pytest.raises(ValueError, match=r"query must have shape \(s_q, b, E\) with E=12, got \(5, 2, 11\)"):
        ours(q[..., :11], k, v)
    with pytest.raises(ValueError, match=r"key must have shape \(s_kv, b, kdim=7\) with b=2, got \(6, 3, 7\)"):
        ours(q, torch.randn(6, 3, 7), v)
    with pytest.raises(
        ValueError, match=r"value must have shape \(s_kv, b, vdim=9\) with b=2, s_kv=6, like key, got \(4, 2, 9\)"
    ):
        ours(q, k, v[:4])
    with pytest.raises(TypeError, match=r"query must have the parameters' dtype torch.float32, got torch.float64"):
        ours(q.double(), k.double(), v.double())
