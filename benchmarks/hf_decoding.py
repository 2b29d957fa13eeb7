"""Per-token decoding latency: mha against Hugging Face Transformers' Llama attention layer.

Run: ``python benchmarks/hf_decoding.py`` (about 20 seconds on 2 cores; needs
``pip install "mha[bench]"``). Prints a table and writes
``benchmarks/results/hf_decoding.json``.

One attention layer, hidden 512, 8 query heads, 2 key/value heads, rotary
positions, CPU, one token at a time after a prompt of 128, 1,024 or 4,096
tokens, in float32 and bfloat16. Contenders, timed round-robin in one process:

* ``mha``: ``MultiHeadAttention`` with its ``KVCache`` sized for 8,192 positions,
  as a user would size it for the longest conversation;
* ``hf dynamic``: ``LlamaAttention`` (sdpa) with a ``DynamicCache``, which grows;
* ``hf static``: ``LlamaAttention`` (sdpa) with a ``StaticCache`` of 8,192 positions.

A fourth contender, ``bare kernels``, is the floor for an eager step: the
kernels mha's one-token step runs (three projections, for the rotary
positions one complex multiply of the two halves paired up, two cache writes,
one attention kernel, the output projection), called straight, with no module, no checks and no Python around
them (on copies of mha's weights, so that it does not warm mha's caches). Against
it, ``mha / bare`` is what the library adds; ``bare / dynamic`` is the best that
any implementation with these kernels could reach. Taking turns, every
contender finds both its weights and its code cold.

A second table times stacks of ``--layers`` (8) layers of mha and of
Transformers (``DynamicCache``), one token through each stack in turn: as in a
deep model, the code stays warm from layer to layer while the weights do not.

They hold the same weights, copied as they are: mha's ``RotaryEmbedding`` with
``interleaved=False`` rotates the two halves of each head, as Transformers'
``rotate_half`` does. The script checks that all four compute the same outputs
before timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import print_table, write_results
from torch.nn import functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mha import MultiHeadAttention, RotaryEmbedding  # noqa: E402

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 512, 8, 2, 64
MAX_LEN = 8192
FILLED = (128, 1024, 4096)
TARGET = 0.8  # mha's per-token time at most this fraction of Transformers'


def build(dtype: torch.dtype):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = LlamaConfig(
        hidden_size=HIDDEN,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        intermediate_size=2 * HIDDEN,
        num_hidden_layers=1,
        max_position_embeddings=MAX_LEN + 64,
    )
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = LlamaAttention(config, layer_idx=0).eval()
    rope = LlamaRotaryEmbedding(config)
    positional = RotaryEmbedding(HEAD_DIM, base=config.rope_parameters["rope_theta"], interleaved=False)
    ours = MultiHeadAttention(HIDDEN, HEADS, num_kv_heads=KV_HEADS, bias=False, positional=positional).eval()
    with torch.no_grad():
        for ours_proj, theirs_proj in (
            (ours.q_proj, hf.q_proj),
            (ours.k_proj, hf.k_proj),
            (ours.v_proj, hf.v_proj),
            (ours.out_proj, hf.o_proj),
        ):
            ours_proj.weight.copy_(theirs_proj.weight)
    return config, hf.to(dtype), rope, ours.to(dtype)


class BareKernels:
    """mha's decoding kernels on mha's weights, called straight: the floor for an eager step."""

    def __init__(self, ours: MultiHeadAttention, dtype: torch.dtype) -> None:
        # Copies: reading mha's own weights would bring them into the cache right before mha's turn.
        self.weights = [p.weight.detach().clone() for p in (ours.q_proj, ours.k_proj, ours.v_proj, ours.out_proj)]
        self.keys = torch.zeros(1, KV_HEADS, MAX_LEN, HEAD_DIM, dtype=dtype)
        self.values = torch.zeros_like(self.keys)
        self.angles = ours.attention.positional._table(MAX_LEN, dtype, self.keys.device).clone()  # (MAX_LEN, d/2)
        self.length = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        wq, wk, wv, wo = self.weights
        start, s = self.length, x.shape[1]
        q, k = F.linear(x, wq).view(1, s, HEADS, HEAD_DIM), F.linear(x, wk).view(1, s, KV_HEADS, HEAD_DIM)
        halves = torch.cat((q, k), dim=2).unflatten(-1, (2, -1)).transpose(-1, -2)  # (..., d/2, 2)
        qk = torch.view_as_complex(halves.float().contiguous())  # float32 in: .float() returns the view
        qk = torch.view_as_real(qk * self.angles[start : start + s, None]).transpose(-1, -2)
        qk = qk.to(x.dtype).contiguous().flatten(-2)
        self.keys[:, :, start : start + s] = qk[:, :, HEADS:].transpose(1, 2)
        self.values[:, :, start : start + s] = F.linear(x, wv).view(1, s, KV_HEADS, HEAD_DIM).transpose(1, 2)
        self.length = end = start + s
        keys, values = self.keys[:, :, :end], self.values[:, :, :end]
        if s == 1:  # the query heads of a key/value head as that head's queries
            context = F.scaled_dot_product_attention(qk[:, 0, :HEADS].view(1, KV_HEADS, -1, HEAD_DIM), keys, values)
        else:  # the prompt, from an empty cache: the kernel's own causal mask is the right one
            q = qk[:, :, :HEADS].transpose(1, 2)
            context = F.scaled_dot_product_attention(q, keys, values, is_causal=True, enable_gqa=True).transpose(1, 2)
        return F.linear(context.reshape(1, s, HIDDEN), wo)


class Contenders:
    """The four decoders, each with its own cache (bare kernels keep theirs), filled with the same prompt."""

    def __init__(self, dtype: torch.dtype, filled: int) -> None:
        from transformers import DynamicCache, StaticCache

        self.config, self.hf, self.rope, self.ours = build(dtype)
        self.dtype = dtype
        self.bare = BareKernels(self.ours, dtype)
        self.caches = {
            "mha": self.ours.new_cache(1, MAX_LEN),
            "hf dynamic": DynamicCache(config=self.config),
            "hf static": StaticCache(config=self.config, max_cache_len=MAX_LEN),
            "bare kernels": None,  # keeps its own buffers; the keys name the contenders
        }
        self.position = 0
        prompt = torch.randn(1, filled, HIDDEN, dtype=dtype)
        self.outputs = {name: self.step(name, prompt) for name in self.caches}
        self.position = filled

    def step(self, name: str, x: torch.Tensor) -> torch.Tensor:
        cache = self.caches[name]
        if name == "mha":
            return self.ours(x, cache=cache)
        if name == "bare kernels":
            return self.bare(x)
        s = x.shape[1]
        positions = torch.arange(self.position, self.position + s)[None]
        cos, sin = self.rope(x, positions)
        mask = None
        if name == "hf static" and s == 1:
            # What the model's mask says for one new token: the filled slots, itself included.
            mask = (torch.arange(MAX_LEN) <= self.position)[None, None, None]
        return self.hf(
            x, position_embeddings=(cos.to(self.dtype), sin.to(self.dtype)), attention_mask=mask, cache=cache
        )[0]

    def check_same_outputs(self, tolerance: float) -> float:
        x = torch.randn(1, 1, HIDDEN, dtype=self.dtype)
        outs = {name: self.step(name, x) for name in self.caches}
        self.position += 1
        worst = max((outs[name] - outs["mha"]).abs().max().item() / outs["mha"].abs().max().item() for name in outs)
        prompt_worst = max((self.outputs[name] - self.outputs["mha"]).abs().max().item() for name in self.outputs)
        if worst > tolerance or prompt_worst > tolerance * 10:
            raise AssertionError(f"contenders disagree: {worst:.2e} (step), {prompt_worst:.2e} (prompt)")
        return worst

    def time_steps(self, steps: int) -> dict[str, float]:
        """Median seconds per one-token step, round-robin over the contenders."""
        samples: dict[str, list[float]] = {name: [] for name in self.caches}
        x = torch.randn(steps, 1, 1, HIDDEN, dtype=self.dtype)
        for i in range(steps):
            for name in self.caches:
                start = time.perf_counter()
                self.step(name, x[i])
                samples[name].append(time.perf_counter() - start)
            self.position += 1
        return {name: statistics.median(t[2:]) for name, t in samples.items()}  # the first two warm up


def deep_step_times(dtype: torch.dtype, filled: int, layers: int, steps: int) -> dict[str, float]:
    """Median seconds per layer of a one-token step through `layers` layers of each library, in turns.

    The single-layer round-robin above leaves both the weights and the code
    cold at every step. In a deep model the code of one layer is the code of
    the next, so it stays warm, while every layer's weights are new: this
    measures that case, one token through all of mha's layers, then through
    all of Transformers' (``DynamicCache``).
    """
    from transformers import DynamicCache

    stack = [build(dtype) for _ in range(layers)]
    config, _, rope, _ = stack[0]
    config.num_hidden_layers = layers
    hf_cache = DynamicCache(config=config)
    for i, (_, hf, _, _) in enumerate(stack):
        hf.layer_idx = i
    ours_caches = [ours.new_cache(1, MAX_LEN) for *_, ours in stack]

    def hf_step(x: torch.Tensor, position: int) -> None:
        cos, sin = rope(x, torch.arange(position, position + x.shape[1])[None])
        angles = cos.to(dtype), sin.to(dtype)  # once per token, as a model does, not once per layer
        for _, hf, _, _ in stack:
            hf(x, position_embeddings=angles, attention_mask=None, cache=hf_cache)

    def ours_step(x: torch.Tensor, position: int) -> None:  # the cache knows the position
        for (*_, ours), cache in zip(stack, ours_caches, strict=True):
            ours(x, cache=cache)

    prompt = torch.randn(1, filled, HIDDEN, dtype=dtype)
    hf_step(prompt, 0)
    ours_step(prompt, 0)
    samples: dict[str, list[float]] = {"mha": [], "hf dynamic": []}
    for i, x in enumerate(torch.randn(steps, 1, 1, HIDDEN, dtype=dtype)):
        for name, run in (("mha", ours_step), ("hf dynamic", hf_step)):
            start = time.perf_counter()
            run(x, filled + i)
            samples[name].append((time.perf_counter() - start) / layers)
    return {name: statistics.median(t[2:]) for name, t in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--layers", type=int, default=8, help="depth of the stacks in the second table")
    args = parser.parse_args()
    rows, results, ok = [], [], True
    deep_rows, deep_results = [], []
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            for filled in FILLED:
                contenders = Contenders(dtype, filled)
                error = contenders.check_same_outputs(1e-4 if dtype == torch.float32 else 3e-2)
                times = contenders.time_steps(args.steps)
                ratios = {ref: times["mha"] / times[ref] for ref in ("hf dynamic", "hf static", "bare kernels")}
                floor = {ref: times["bare kernels"] / times[ref] for ref in ("hf dynamic", "hf static")}
                met = all(ratios[ref] <= TARGET for ref in ("hf dynamic", "hf static"))
                ok &= met
                name = str(dtype).removeprefix("torch.")
                results.append(
                    {
                        "dtype": name,
                        "filled": filled,
                        "ms": {k: v * 1e3 for k, v in times.items()},
                        "ratios": ratios,
                        "bare_ratios": floor,
                        "relative_difference": error,
                        "target_met": met,
                    }
                )
                rows.append(
                    [
                        name,
                        filled,
                        *(f"{times[k] * 1e3:.3f}" for k in contenders.caches),
                        *(f"{ratios[k]:.2f}" for k in ratios),
                        f"{floor['hf dynamic']:.2f}",
                        "PASS" if met else "FAIL",
                    ]
                )
                deep = deep_step_times(dtype, filled, args.layers, args.steps // 2)
                deep_ratio = deep["mha"] / deep["hf dynamic"]
                deep_results.append(
                    {
                        "dtype": name,
                        "filled": filled,
                        "ms_per_layer": {k: v * 1e3 for k, v in deep.items()},
                        "ratio": deep_ratio,
                    }
                )
                deep_rows.append(
                    [
                        name,
                        filled,
                        *(f"{deep[k] * 1e3:.3f}" for k in deep),
                        f"{deep_ratio:.2f}",
                        "PASS" if deep_ratio <= TARGET else "FAIL",
                    ]
                )
    print(
        f"one layer, hidden {HIDDEN}, {HEADS} heads, {KV_HEADS} key/value heads, rotary; "
        f"mha cache sized {MAX_LEN}; ms per token, median of {args.steps - 2} interleaved steps\n"
    )
    print_table(
        [
            "dtype",
            "filled",
            "mha",
            "hf dynamic",
            "hf static",
            "bare",
            "mha/dynamic",
            "mha/static",
            "mha/bare",
            "bare/dynamic",
            f"<= {TARGET}",
        ],
        rows,
    )
    print(f"\n{args.layers} layers of each, one token through all of them in turn; ms per layer\n")
    print_table(["dtype", "filled", "mha", "hf dynamic", "mha/dynamic", f"<= {TARGET}"], deep_rows)
    path = write_results(
        "hf_decoding",
        {
            "cases": results,
            "deep": {"layers": args.layers, "cases": deep_results},
            "target": TARGET,
            "all_targets_met": ok,
        },
    )
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
