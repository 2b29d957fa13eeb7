"""Every Transformers family that builds tiny, on `attn_implementation="mha"` against `"eager"`.

Enumerates the causal-LM, masked-LM and sequence-to-sequence families of the
installed Transformers, builds each from its config class with tiny sizes (no
downloads), copies the weights of an `eager` model into an `mha` one, and
compares logits on a padded batch (float32; float64 eager turns the padded
rows of a left-padded batch into NaN) and, for generating models, a short
greedy generation. It counts the calls that reach `mha` and classifies each
family:

- exact: logits within 1e-5 + 1e-5·|logit| on real positions, same greedy tokens,
  and `mha` was called;
- refused: `mha` raised a `ValueError` naming the feature it cannot compute;
- not on the interface: the model computes attention itself and refuses
  `"mha"` when it is built;
- not buildable tiny: the reference model itself could not be built or run
  tiny from its config alone (needs images, audio, a tokenizer, ...);
- other: anything else (a silent difference, `mha` never called, an unclear
  crash). The goal is none.

Run: `PYTHONPATH=. python3 benchmarks/hf_families.py [model_type ...]`. Writes
`benchmarks/results/hf_families.json` and `docs/_snippets/hf-families-table.md`
(only for a full run; `--update model_type ...` reruns those families and
replaces their records in both files).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import platform
import signal
import subprocess
import sys
import time
import traceback
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import CONFIG_MAPPING
from transformers.models.auto import modeling_auto

import mha.hf

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "hf_families.json"
PARTIAL = ROOT / "benchmarks" / "results" / "hf_families.partial.jsonl"  # each record as it comes
SNIPPET = ROOT / "docs" / "_snippets" / "hf-families-table.md"
VOCAB = 99
TOLERANCE = 1e-5  # float32, absolute and relative
SECONDS = 120  # per family
MAX_PARAMETERS = 3_000_000

# Tiny sizes, applied to whichever of these a config takes. Two layers, hidden 32,
# 4 heads of 8 (2 key/value heads), small vocabularies and experts.
TINY: dict[str, Any] = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "d_model": 32,
    "n_embd": 32,
    "n_embed": 32,
    "embed_dim": 32,
    "dim": 32,
    "intermediate_size": 37,
    "ffn_dim": 37,
    "d_ff": 37,
    "n_inner": 37,
    "encoder_ffn_dim": 37,
    "decoder_ffn_dim": 37,
    "moe_intermediate_size": 16,
    "shared_expert_intermediate_size": 16,
    "num_hidden_layers": 2,
    "num_layers": 2,
    "n_layer": 2,
    "n_layers": 2,
    "encoder_layers": 2,
    "decoder_layers": 2,
    "num_decoder_layers": 2,
    "num_attention_heads": 4,
    "num_heads": 4,
    "n_head": 4,
    "n_heads": 4,
    "encoder_attention_heads": 4,
    "decoder_attention_heads": 4,
    "num_key_value_heads": 2,
    "n_kv_heads": 2,
    "head_dim": 8,
    "d_kv": 8,
    "kv_channels": 8,
    "max_position_embeddings": 64,
    "n_positions": 64,
    "n_ctx": 64,
    "max_seq_len": 64,
    "num_experts": 4,
    "n_routed_experts": 4,
    "num_local_experts": 4,
    "num_experts_per_tok": 2,
    "n_group": 1,
    "topk_group": 1,
    "q_lora_rank": 16,
    "kv_lora_rank": 16,
    "qk_rope_head_dim": 4,
    "qk_nope_head_dim": 8,
    "v_head_dim": 8,
    "index_head_dim": 8,
    "index_n_heads": 2,
    "index_topk": 5,  # fewer than the keys: the sparse selection is active
    "sliding_window": 5,  # shorter than the inputs: the window is active
    "attention_chunk_size": 5,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "decoder_start_token_id": 1,
    "tie_word_embeddings": False,
    "vocab_size_per_layer_input": VOCAB,
    "hidden_size_per_layer_input": 8,
    "global_head_dim": 8,
    "attention_types": [[["global", "local"], 1]],  # GPT-Neo
    "window_size": 5,  # GPT-Neo's local layers
    "rotary_dim": 4,
}

MAPPINGS = {
    "causal": modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    "seq2seq": modeling_auto.MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    "masked": modeling_auto.MODEL_FOR_MASKED_LM_MAPPING_NAMES,
}


class _Timeout(Exception):
    pass


def families() -> dict[str, tuple[str, str]]:
    """model_type -> (kind, model class name); a family in several mappings counts once."""
    found: dict[str, tuple[str, str]] = {}
    for kind, mapping in MAPPINGS.items():
        for model_type, class_name in mapping.items():
            if model_type not in found and isinstance(class_name, str):
                found[model_type] = (kind, class_name)
    return found


def tiny_config(model_type: str) -> Any:
    config_class = CONFIG_MAPPING[model_type]
    defaults = config_class().to_dict()
    sizes = {k: v for k, v in TINY.items() if k in defaults}
    if "kv_lora_rank" in defaults and "num_key_value_heads" in sizes:
        sizes["num_key_value_heads"] = sizes["num_attention_heads"]  # latent attention (MLA) expands to every head
        sizes.pop("head_dim", None)  # derived from the latent sizes
    config = config_class(**sizes)
    for sub in ("text_config", "decoder", "encoder"):  # composite configs: shrink the text part
        inner = getattr(config, sub, None)
        if inner is not None and hasattr(inner, "to_dict"):
            inner_defaults = inner.to_dict()
            shrunk = type(inner)(**{k: v for k, v in TINY.items() if k in inner_defaults})
            setattr(config, sub, shrunk)
    return config


def _inputs(kind: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    ids = torch.randint(3, VOCAB, (2, 11), generator=generator)
    mask = torch.ones(2, 11, dtype=torch.long)
    if kind == "causal":
        mask[1, :3] = 0  # left padding, as for generation
    else:
        mask[1, 8:] = 0  # right padding
    inputs = {"input_ids": ids, "attention_mask": mask}
    if kind == "seq2seq":
        inputs["decoder_input_ids"] = torch.randint(3, VOCAB, (2, 7), generator=generator)
    return inputs


def _real(kind: str, inputs: dict[str, torch.Tensor], logits: torch.Tensor) -> torch.Tensor:
    if kind == "seq2seq":
        return logits  # decoder positions are all real
    return logits[inputs["attention_mask"].bool()]


def _logits(output: Any) -> torch.Tensor:
    logits = getattr(output, "logits", None)
    if logits is None:
        logits = output[0]
    if isinstance(logits, (list, tuple)):
        logits = logits[0]
    return logits


@contextlib.contextmanager
def _limit(seconds: int):
    def handler(signum: int, frame: Any) -> None:
        raise _Timeout(f"over {seconds} s")

    previous = signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _build(model_type: str, kind: str, implementation: str) -> Any:
    factory = {
        "causal": transformers.AutoModelForCausalLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
        "masked": transformers.AutoModelForMaskedLM,
    }[kind]
    config = tiny_config(model_type)
    with torch.device("meta"):
        meta = factory.from_config(copy.deepcopy(config), attn_implementation="eager", experts_implementation="eager")
    count = sum(p.numel() for p in meta.parameters())
    if count > MAX_PARAMETERS:
        raise _TooBig(f"{count:,} parameters with the tiny sizes")
    torch.manual_seed(0)
    return factory.from_config(config, attn_implementation=implementation, experts_implementation="eager").eval()


class _TooBig(Exception):
    pass


def _short(error: BaseException) -> str:
    text = f"{type(error).__name__}: {error}".replace("\n", " ")
    return text[:300]


def check(model_type: str, kind: str, calls: Counter) -> dict[str, Any]:
    """Classify one family."""
    record: dict[str, Any] = {"model_type": model_type, "kind": kind}
    generator = torch.Generator().manual_seed(0)
    inputs = _inputs(kind, generator)
    try:
        reference = _build(model_type, kind, "eager")
        with torch.no_grad():
            expected = _logits(reference(**inputs))
    except Exception as error:  # noqa: BLE001 - the reference cannot run: record why
        return {**record, "status": "not buildable tiny", "reason": _short(error)}
    record["model_class"] = type(reference).__name__
    try:
        ours = _build(model_type, kind, "mha")
    except ValueError as error:
        if "does not route attention" in str(error):
            return {**record, "status": "not on the interface", "reason": _short(error)}
        return {**record, "status": "other", "reason": "build: " + _short(error)}
    except Exception as error:  # noqa: BLE001
        return {**record, "status": "other", "reason": "build: " + _short(error)}
    ours.load_state_dict(reference.state_dict())
    calls.clear()
    try:
        with torch.no_grad():
            got = _logits(ours(**inputs))
    except ValueError as error:
        text = str(error)
        if "cannot compute" in text:
            feature = next((f for f in sorted(set(mha.hf._REFUSED.values())) if f"({f})" in text), "?")
            return {**record, "status": f"refused: {feature}", "reason": _short(error)}
        return {**record, "status": "other", "reason": _short(error)}
    except Exception as error:  # noqa: BLE001
        return {**record, "status": "other", "reason": _short(error), "trace": traceback.format_exc(limit=-3)}
    record["calls"] = calls["n"]
    if calls["n"] == 0:
        if not any("Attention" in type(m).__name__ for m in ours.modules()):
            return {**record, "status": "no attention layers", "reason": "nothing for mha to run"}
        return {**record, "status": "other", "reason": "mha was never called"}
    got, expected = _real(kind, inputs, got), _real(kind, inputs, expected)
    delta = (got - expected).abs().max().item()
    record["max_abs_logit_delta"] = delta
    if not bool(((got - expected).abs() <= TOLERANCE * (1 + expected.abs())).all()):
        return {**record, "status": "other", "reason": f"logits differ by {delta:.3g}"}
    if kind != "masked":
        same = _same_generation(reference, ours, inputs)
        if same is not True:
            return {**record, "status": "other" if same is False else "exact", "generation": same}
        record["generation"] = "same greedy tokens"
    return {**record, "status": "exact"}


def _same_generation(reference: Any, ours: Any, inputs: dict[str, torch.Tensor]) -> bool | str:
    if not reference.can_generate():
        return "no generate"
    kwargs = dict(max_new_tokens=3, do_sample=False, pad_token_id=0)
    prompt = {k: v for k, v in inputs.items() if k != "decoder_input_ids"}
    try:
        expected = reference.generate(**prompt, **kwargs)
    except Exception as error:  # noqa: BLE001 - generation is not what is compared here
        return "eager cannot generate tiny: " + _short(error)
    return bool(torch.equal(ours.generate(**prompt, **kwargs), expected))


def _counting() -> Counter:
    calls: Counter = Counter()
    original = mha.hf.attention_forward

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        return original(*args, **kwargs)

    mha.hf.attention_forward = counting  # type: ignore[assignment]
    mha.hf.register()
    mha.hf.attention_forward = original  # type: ignore[assignment]
    return calls


def table(records: list[dict[str, Any]]) -> str:
    counts = Counter(r["status"] for r in records)
    lines = [
        f"Transformers {transformers.__version__}, {len(records)} families "
        f"({sum(1 for r in records if r['status'] != 'not buildable tiny')} built tiny): "
        + ", ".join(f"{counts[s]} {s}" for s in sorted(counts)),
        "",
        "| status | families |",
        "|---|---|",
    ]
    for status in sorted(counts):
        names = sorted(r["model_type"] for r in records if r["status"] == status)
        lines.append(f"| {status} ({counts[status]}) | {', '.join(f'`{n}`' for n in names)} |")
    return "\n".join(lines) + "\n"


def _run(chosen: list[str], found: dict[str, tuple[str, str]], out: Any) -> list[dict[str, Any]]:
    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    calls = _counting()
    records = []
    for model_type in chosen:
        kind, _ = found[model_type]
        began = time.perf_counter()
        try:
            with _limit(SECONDS):
                record = check(model_type, kind, calls)
        except _Timeout as error:
            record = {"model_type": model_type, "kind": kind, "status": "other", "reason": "timed out: " + str(error)}
        record["seconds"] = round(time.perf_counter() - began, 2)
        records.append(record)
        out.write(json.dumps(record) + "\n")
        out.flush()
    return records


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_types", nargs="*", help="only these families (the files are not written)")
    parser.add_argument("--workers", type=int, default=2, help="processes, each taking every n-th family")
    parser.add_argument("--shard", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument(
        "--update",
        action="store_true",
        help="with model_types: replace their records in the saved results and rewrite the table",
    )
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        help="JSON lines of families already checked (as saved next to the results): skip them",
    )
    args = parser.parse_args()
    found = families()
    chosen = args.model_types or sorted(found)
    earlier = []
    if args.resume is not None and args.shard is None:
        earlier = [json.loads(line) for line in args.resume.read_text().splitlines() if line.startswith("{")]
        done = {r["model_type"] for r in earlier}
        chosen = [t for t in chosen if t not in done]
    if args.shard is not None:  # a worker: one line of JSON per family on stdout
        _run(chosen[args.shard :: args.workers], found, sys.stdout)
        return
    start = time.perf_counter()
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, *chosen, "--workers", str(args.workers), "--shard", str(i)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(args.workers)
    ]
    records = list(earlier)
    for worker in workers:
        for line in worker.stdout or ():
            if line.startswith("{"):
                record = json.loads(line)
                records.append(record)
                if not args.model_types:  # a full run: keep each record, for --resume
                    with PARTIAL.open("a") as partial:
                        partial.write(line)
                print(
                    f"{record['model_type']:28} {record['status']:22} "
                    f"{record.get('reason', record.get('max_abs_logit_delta', ''))}"[:200],
                    flush=True,
                )
        worker.wait()
    done = {r["model_type"] for r in records}
    for model_type in args.model_types or sorted(
        found
    ):  # a worker that died (memory) leaves its family unrecorded: say so
        if model_type not in done:
            records.append(
                {
                    "model_type": model_type,
                    "kind": found[model_type][0],
                    "status": "other",
                    "reason": "the worker process died",
                }
            )
    records.sort(key=lambda r: r["model_type"])
    print(table(records))
    print(f"{time.perf_counter() - start:.0f} s")
    if args.update and args.model_types:
        saved = json.loads(RESULTS.read_text())
        fresh = {r["model_type"] for r in records}
        records = sorted(
            [r for r in saved["records"] if r["model_type"] not in fresh] + records, key=lambda r: r["model_type"]
        )
        saved["records"], saved["transformers"], saved["torch"] = records, transformers.__version__, torch.__version__
        RESULTS.write_text(json.dumps(saved, indent=1) + "\n")
        SNIPPET.write_text(table(records))
        print(table(records))
    if not args.model_types and args.shard is None:
        RESULTS.write_text(
            json.dumps(
                {
                    "transformers": transformers.__version__,
                    "torch": torch.__version__,
                    "machine": platform.machine(),
                    "seconds": round(time.perf_counter() - start),
                    "records": records,
                },
                indent=1,
            )
            + "\n"
        )
        SNIPPET.write_text(table(records))


if __name__ == "__main__":
    main()
