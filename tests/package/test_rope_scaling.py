"""RoPE scaling, both layouts and partial rotary against Transformers' own rotary embeddings.

Transformers computes its angles in float32; at position 128k one float32
angle is uncertain by ~0.004 radian, so mha must round exactly as it does to
agree within 1e-6. The positions are a sample up to 128k: no 128k-long tensor.
"""

from __future__ import annotations

import pytest
import torch
from torch._dynamo.exc import Unsupported

from helpers import EXACT, FLOAT32_FEW_OPS, assert_close, under_fullgraph
from mha import RotaryEmbedding

transformers = pytest.importorskip("transformers")
from transformers import LlamaConfig, Phi3Config  # noqa: E402
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb  # noqa: E402
from transformers.models.phi3 import modeling_phi3  # noqa: E402

LONG = 131072
SCALINGS = {
    "linear": {"rope_type": "linear", "factor": 4.0},
    "llama3": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "yarn gpt-oss": {
        "rope_type": "yarn",
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "original_max_position_embeddings": 4096,
        "truncate": False,
    },
    "yarn defaults": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768},
    "yarn mscale": {
        "rope_type": "yarn",
        "factor": 32.0,
        "mscale": 1.0,
        "mscale_all_dim": 0.707,
        "original_max_position_embeddings": 4096,
    },
    "yarn attention_factor": {
        "rope_type": "yarn",
        "factor": 8.0,
        "attention_factor": 0.75,
        "beta_fast": 16.0,
        "beta_slow": 2.0,
        "original_max_position_embeddings": 16384,
    },
}


def sample_positions(n: int = 37) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.cat([torch.arange(3), torch.randint(0, LONG, (n,), generator=generator), torch.tensor([LONG - 1])])


def llama_rope(head_dim: int, theta: float, scaling: dict | None, max_positions: int = LONG) -> LlamaRotaryEmbedding:
    parameters = {"rope_type": "default"} if scaling is None else dict(scaling)
    config = LlamaConfig(
        hidden_size=3 * head_dim,
        num_attention_heads=3,
        head_dim=head_dim,
        max_position_embeddings=max_positions,
        rope_parameters={**parameters, "rope_theta": theta},
    )
    return LlamaRotaryEmbedding(config)


def transformers_rotation(rope, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    cos, sin = rope(x, positions[None])
    return apply_rotary_pos_emb(x, x, cos, sin)[0]


@pytest.mark.parametrize("name", ["default", *SCALINGS])
def test_scaling_equals_transformers_up_to_128k(name):
    scaling = SCALINGS.get(name)
    theta, d = 500000.0, 10
    positions = sample_positions()
    x = torch.randn(2, 3, positions.numel(), d)
    expected = transformers_rotation(llama_rope(d, theta, scaling), x, positions)
    ours = RotaryEmbedding(d, theta, interleaved=False, scaling=scaling)
    assert_close(ours(x, positions), expected, FLOAT32_FEW_OPS)
    # The table a cache reads from, and the (cos, sin) form compiled graphs use, agree too.
    tabled = ours.rotate(x, ours.angles(positions, x.dtype, x.device, end=LONG))
    assert_close(tabled, expected, FLOAT32_FEW_OPS)
    work = ours.frequencies(torch.float32, x.device)
    per_feature = ours.rotate(x, ours._per_feature(positions[:, None].float() * work))
    assert_close(per_feature, expected, FLOAT32_FEW_OPS)


def test_dynamic_scaling_follows_the_longest_sequence_seen_like_transformers():
    """Transformers grows the base when a call reaches past the longest length seen, and resets it below the trained length."""
    d, theta, trained = 8, 10000.0, 4096
    scaling = {"rope_type": "dynamic", "factor": 2.0}
    theirs = llama_rope(d, theta, scaling, max_positions=trained)
    ours = RotaryEmbedding(
        d, theta, interleaved=False, scaling={**scaling, "original_max_position_embeddings": trained}
    )
    # A prompt past the trained length, decoding steps, a short call (reset), then far positions.
    calls = [
        torch.arange(5000),
        torch.tensor([5000]),
        torch.tensor([5001]),
        torch.arange(7),
        torch.tensor([100, 3000, 4095]),
        sample_positions(11),
    ]
    for positions in calls:
        x = torch.randn(1, 2, positions.numel(), d)
        assert_close(ours(x, positions), transformers_rotation(theirs, x, positions), FLOAT32_FEW_OPS)
    assert ours._dynamic_length == LONG


def test_dynamic_scaling_in_a_cached_decode_matches_transformers():
    """Steps through mha's cache rotate with the grown base of each step, as Transformers' layers do."""
    d, theta, trained = 8, 10000.0, 6
    scaling = {"rope_type": "dynamic", "factor": 3.0}
    theirs = llama_rope(d, theta, scaling, max_positions=trained)
    ours = RotaryEmbedding(
        d, theta, interleaved=False, scaling={**scaling, "original_max_position_embeddings": trained}
    )
    x = torch.randn(1, 2, 1, d)
    for step in range(10):
        position = torch.tensor([step])
        expected = transformers_rotation(theirs, x, position)
        assert_close(ours.rotate(x, ours.angles_at(step, 1, x.dtype, x.device)), expected, FLOAT32_FEW_OPS)


@pytest.mark.parametrize("fraction", [0.5, 0.75])
def test_partial_rotary_equals_phi3(fraction):
    d, theta = 16, 10000.0
    config = Phi3Config(
        hidden_size=2 * d,
        num_attention_heads=2,
        partial_rotary_factor=fraction,
        max_position_embeddings=LONG,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
    )
    theirs = modeling_phi3.Phi3RotaryEmbedding(config)
    positions = sample_positions(9)
    x = torch.randn(2, 3, positions.numel(), d)
    cos, sin = theirs(x, positions[None])
    expected = modeling_phi3.apply_rotary_pos_emb(x, x, cos, sin)[0]
    ours = RotaryEmbedding(d, theta, interleaved=False, rotary_dim=int(d * fraction))
    assert_close(ours(x, positions), expected, FLOAT32_FEW_OPS)
    assert_close(ours(x, positions)[..., int(d * fraction) :], x[..., int(d * fraction) :], EXACT)


def test_a_transformers_rope_parameters_dict_is_accepted_as_it_is():
    config = LlamaConfig(
        hidden_size=48, num_attention_heads=3, rope_parameters={**SCALINGS["llama3"], "rope_theta": 5e5}
    )
    rope = RotaryEmbedding(16, 5e5, interleaved=False, scaling=config.rope_parameters)
    torch.testing.assert_close(
        rope.frequencies(torch.float32, torch.device("cpu")), LlamaRotaryEmbedding(config).inv_freq
    )


@pytest.mark.parametrize(
    ("scaling", "error", "message"),
    [
        ({"rope_type": "longrope", "factor": 2.0}, ValueError, r"rope_type'\] must be one of .*got 'longrope'"),
        ({"factor": 2.0}, ValueError, r"rope_type'\] must be one of .*got None"),
        ({"rope_type": "linear"}, ValueError, r"rope_type 'linear' needs \['factor'\]"),
        (
            {"rope_type": "linear", "factor": 2.0, "low_freq_factor": 1.0},
            ValueError,
            r"unknown keys \['low_freq_factor'\]",
        ),
        (
            {"rope_type": "linear", "factor": -2.0},
            ValueError,
            r"scaling\['factor'\] for rope_type 'linear' must be a positive number, got -2.0",
        ),
        ({"rope_type": "dynamic", "factor": 2.0}, ValueError, r"needs \['original_max_position_embeddings'\]"),
        (
            {
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 4.0,
                "high_freq_factor": 1.0,
                "original_max_position_embeddings": 8192,
            },
            ValueError,
            r"high_freq_factor'\] must be greater",
        ),
        (
            {"rope_type": "yarn", "original_max_position_embeddings": 4096},
            ValueError,
            r"needs 'factor', or 'max_position_embeddings'",
        ),
        (
            {
                "rope_type": "yarn",
                "factor": 4.0,
                "beta_fast": 1.0,
                "beta_slow": 2.0,
                "original_max_position_embeddings": 64,
            },
            ValueError,
            r"beta_fast'\] must be greater",
        ),
        (
            {"rope_type": "yarn", "factor": 4.0, "truncate": "no", "original_max_position_embeddings": 64},
            ValueError,
            r"truncate'\] must be a bool, got 'no'",
        ),
        (
            {"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0},
            ValueError,
            r"rope_theta'\] = 500.0 disagrees with base = 10000.0",
        ),
        (
            {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5},
            ValueError,
            r"means rotary_dim = 4, but rotary_dim = 8",
        ),
        ("linear", TypeError, r"scaling must be a dict .* got str"),
    ],
)
def test_bad_scaling(scaling, error, message):
    with pytest.raises(error, match=message):
        RotaryEmbedding(8, scaling=scaling)


def test_yarn_factor_from_lengths():
    rope = RotaryEmbedding(
        8, scaling={"rope_type": "yarn", "max_position_embeddings": 8192, "original_max_position_embeddings": 2048}
    )
    expected = RotaryEmbedding(
        8, scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048}
    )
    torch.testing.assert_close(
        rope.frequencies(torch.float32, torch.device("cpu")), expected.frequencies(torch.float32, torch.device("cpu"))
    )
    assert rope.attention_factor == expected.attention_factor


def test_dynamic_scaling_refuses_to_compile():
    rope = RotaryEmbedding(8, scaling={"rope_type": "dynamic", "factor": 2.0, "original_max_position_embeddings": 16})
    compiled = torch.compile(rope, backend="eager", fullgraph=True)
    with pytest.raises(Unsupported, match=under_fullgraph("rope_type 'dynamic' changes its frequencies")):
        compiled(torch.randn(1, 1, 3, 8), torch.arange(3))
