"""What materialising the static cache's prefill mask costs in `mha.hf`.

With a static cache, Transformers leaves out the mask of a first chunk whose
extra keys are empty cache slots (causal aligned top-left). `mha.hf`'s mask
function materialises that mask instead, so that a missing mask always means
bottom-right causal (which stays right when a model keeps only its last
queries). This times one prefill forward of a Llama-style model (4 layers,
hidden 256, 8 heads, 2 key/value heads, float32, CPU) into a `StaticCache` of
`2 * prompt` slots:

* ``mha``: as registered (the mask materialised);
* ``mha, mask skipped``: the same attention with Transformers' own SDPA mask
  and keys cut to the prompt, which is what `mha.hf` did before (wrong when a
  model then slices its queries);
* ``sdpa``: Transformers' own.

Run: ``python benchmarks/hf_static_prefill.py`` (about a minute on 2 cores).
Contenders take turns in one process; the table gives medians and ratios.
"""

from __future__ import annotations

import copy
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from transformers import AttentionInterface, AttentionMaskInterface, AutoModelForCausalLM, LlamaConfig, StaticCache
from transformers.masking_utils import sdpa_mask

import mha.hf

RESULTS = Path(__file__).resolve().parent / "results" / "hf_static_prefill.json"
PROMPTS = (256, 1024)
REPEATS = 5


def _skipped(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: Any, **kwargs: Any):
    # The former behaviour: a None mask with more keys than queries is top-left causal; cut the keys.
    if mask is None and query.shape[2] > 1:
        key, value = key[:, :, : query.shape[2]], value[:, :, : query.shape[2]]
    return mha.hf.attention_forward(module, query, key, value, mask, **kwargs)


def main() -> None:
    mha.hf.register()
    AttentionInterface.register("mha_skipped", _skipped)
    AttentionMaskInterface.register("mha_skipped", sdpa_mask)
    config = LlamaConfig(
        vocab_size=1000,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=4,
        num_attention_heads=8,
        num_key_value_heads=2,
        max_position_embeddings=4096,
    )
    torch.manual_seed(0)
    models = {}
    for name, implementation in (("mha", "mha"), ("mha, mask skipped", "mha_skipped"), ("sdpa", "sdpa")):
        models[name] = AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=implementation)
        models[name].eval()
        if name != "mha":
            models[name].load_state_dict(models["mha"].state_dict())
    rows = []
    for prompt in PROMPTS:
        ids = torch.randint(0, 1000, (1, prompt))
        times: dict[str, list[float]] = {name: [] for name in models}
        outputs = {}
        for _ in range(REPEATS + 1):  # the first round warms up
            for name, model in models.items():
                cache = StaticCache(config=model.config, max_cache_len=2 * prompt)
                start = time.perf_counter()
                with torch.no_grad():
                    outputs[name] = model(ids, cache=cache, use_cache=True).logits
                times[name].append(time.perf_counter() - start)
        for name in models:
            torch.testing.assert_close(outputs[name], outputs["sdpa"], atol=1e-4, rtol=1e-4)
        medians = {name: statistics.median(t[1:]) for name, t in times.items()}
        rows.append(
            {
                "prompt": prompt,
                "cache": 2 * prompt,
                "ms": {k: round(v * 1e3, 1) for k, v in medians.items()},
                "mha / mask skipped": round(medians["mha"] / medians["mha, mask skipped"], 2),
                "mha / sdpa": round(medians["mha"] / medians["sdpa"], 2),
            }
        )
        print(rows[-1], flush=True)
    RESULTS.write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
