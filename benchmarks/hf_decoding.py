"""Per-token decoding latency: mha against Hugging Face Transformers' Llama attention layer.

Run: ``python benchmarks/hf_decoding.py`` (about half a minute on 2 cores; needs
``pip install "mha[bench]"``). Prints a table and writes
``benchmarks/results/hf_decoding.json``.

One attention layer, hidden 512, 8 query heads, 2 key/value heads, rotary
positions, CPU, one token at a time after a prompt of 128, 1,024 or 4,096
tokens, in float32 and bfloat16. Contenders, timed round-robin in one process:

* ``mha``: ``MultiHeadAttention`` with its ``KVCache`` sized for 8,192 positions,
  as a user would size it for the longest conversation;
* ``hf dynamic``: ``LlamaAttention`` (sdpa) with a ``DynamicCache``, which grows;
* ``hf static``: ``LlamaAttention`` (sdpa) with a ``StaticCache`` of 8,192 positions.

They hold the same weights: Transformers rotates the two halves of each head
(``rotate_half``), mha rotates interleaved pairs (the RoFormer paper's form), so
the query and key rows are permuted within each head to map one onto the
other. The script checks that all three compute the same outputs before timing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from common import print_table, write_results

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mha import MultiHeadAttention, RotaryEmbedding  # noqa: E402

HIDDEN, HEADS, KV_HEADS, HEAD_DIM = 512, 8, 2, 64
MAX_LEN = 8192
FILLED = (128, 1024, 4096)
TARGET = 0.8  # mha's per-token time at most this fraction of Transformers'


def build(dtype: torch.dtype):
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaAttention, LlamaRotaryEmbedding

    config = LlamaConfig(hidden_size=HIDDEN, num_attention_heads=HEADS, num_key_value_heads=KV_HEADS,
                         intermediate_size=2 * HIDDEN, num_hidden_layers=1, max_position_embeddings=MAX_LEN + 64)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    hf = LlamaAttention(config, layer_idx=0).eval()
    rope = LlamaRotaryEmbedding(config)
    base = float(rope.inv_freq[1]) ** (-HEAD_DIM / 2)  # inv_freq[i] = base^(-2i/d)
    ours = MultiHeadAttention(HIDDEN, HEADS, num_kv_heads=KV_HEADS, bias=False,
                              positional=RotaryEmbedding(HEAD_DIM, base=base)).eval()
    # Head-local permutation: Transformers pairs feature i with i + d/2, mha pairs 2i with 2i + 1.
    half = torch.arange(HEAD_DIM // 2)
    within = torch.stack([half, half + HEAD_DIM // 2], dim=1).flatten()  # [0, 32, 1, 33, ...]
    with torch.no_grad():
        for ours_proj, theirs_proj, heads in ((ours.q_proj, hf.q_proj, HEADS), (ours.k_proj, hf.k_proj, KV_HEADS)):
            rows = (torch.arange(heads)[:, None] * HEAD_DIM + within).flatten()
            ours_proj.weight.copy_(theirs_proj.weight[rows])
        ours.v_proj.weight.copy_(hf.v_proj.weight)
        ours.out_proj.weight.copy_(hf.o_proj.weight)
    return config, hf.to(dtype), rope, ours.to(dtype)


class Contenders:
    """The three decoders, each with its own cache, filled with the same prompt."""

    def __init__(self, dtype: torch.dtype, filled: int) -> None:
        from transformers import DynamicCache, StaticCache

        self.config, self.hf, self.rope, self.ours = build(dtype)
        self.dtype = dtype
        self.caches = {
            "mha": self.ours.new_cache(1, MAX_LEN),
            "hf dynamic": DynamicCache(config=self.config),
            "hf static": StaticCache(config=self.config, max_cache_len=MAX_LEN),
        }
        self.position = 0
        prompt = torch.randn(1, filled, HIDDEN, dtype=dtype)
        self.outputs = {name: self.step(name, prompt) for name in self.caches}
        self.position = filled

    def step(self, name: str, x: torch.Tensor) -> torch.Tensor:
        cache = self.caches[name]
        if name == "mha":
            return self.ours(x, cache=cache)
        s = x.shape[1]
        positions = torch.arange(self.position, self.position + s)[None]
        cos, sin = self.rope(x, positions)
        mask = None
        if name == "hf static" and s == 1:
            # What the model's mask says for one new token: the filled slots, itself included.
            mask = (torch.arange(MAX_LEN) <= self.position)[None, None, None]
        return self.hf(x, position_embeddings=(cos.to(self.dtype), sin.to(self.dtype)), attention_mask=mask, cache=cache)[0]

    def check_same_outputs(self, tolerance: float) -> float:
        x = torch.randn(1, 1, HIDDEN, dtype=self.dtype)
        outs = {name: self.step(name, x) for name in self.caches}
        self.position += 1
        worst = max(
            (outs[name] - outs["mha"]).abs().max().item() / outs["mha"].abs().max().item() for name in outs
        )
        prompt_worst = max(
            (self.outputs[name] - self.outputs["mha"]).abs().max().item() for name in self.outputs
        )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    rows, results, ok = [], [], True
    with torch.inference_mode():
        for dtype in (torch.float32, torch.bfloat16):
            for filled in FILLED:
                contenders = Contenders(dtype, filled)
                error = contenders.check_same_outputs(1e-4 if dtype == torch.float32 else 3e-2)
                times = contenders.time_steps(args.steps)
                ratios = {ref: times["mha"] / times[ref] for ref in ("hf dynamic", "hf static")}
                met = all(r <= TARGET for r in ratios.values())
                ok &= met
                name = str(dtype).removeprefix("torch.")
                results.append({"dtype": name, "filled": filled, "ms": {k: v * 1e3 for k, v in times.items()},
                                "ratios": ratios, "relative_difference": error, "target_met": met})
                rows.append([name, filled, *(f"{times[k] * 1e3:.3f}" for k in ("mha", "hf dynamic", "hf static")),
                             *(f"{ratios[k]:.2f}" for k in ratios), "PASS" if met else "FAIL"])
    print(f"one layer, hidden {HIDDEN}, {HEADS} heads, {KV_HEADS} key/value heads, rotary; "
          f"mha cache sized {MAX_LEN}; ms per token, median of {args.steps - 2} interleaved steps\n")
    print_table(["dtype", "filled", "mha", "hf dynamic", "hf static", "mha/dynamic", "mha/static",
                 f"<= {TARGET}"], rows)
    path = write_results("hf_decoding", {"cases": results, "target": TARGET, "all_targets_met": ok})
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
