"""MkDocs hook: the attention explorer's weights, and the numbers its page quotes.

The explorer page (docs/explorer.md) runs the look-up model of
docs/_scripts/lookup_model.py in the browser, in plain JavaScript. This hook
writes the committed weights (docs/_data/lookup.pt) as JSON next to the
explorer's script, `assets/explorer/lookup.json`, at every build: the site
never trains, and the page loads nothing from another host.

It also measures the heads on held-out inputs (where each looks, and what
the model still gets right with it silenced) and puts the table in place of
`<!-- head-table -->` on the explorer pages, so that what the page says each
head does is computed from the very weights the widget runs.
"""

from __future__ import annotations

import json
import sys
from functools import cache
from pathlib import Path

import torch
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from site_build import language, nested_language_build

SCRIPTS = Path(__file__).resolve().parents[1] / "_scripts"
TARGET = Path("assets") / "explorer" / "lookup.json"
PLACEHOLDER = "<!-- head-table -->"
CONTROL_PLACEHOLDER = "<!-- one-head-table -->"
HEADINGS = {
    "en": (
        "head",
        "weight on the place before",
        "weight on the twin",
        "silenced: *before* right",
        "silenced: *twin* right",
    ),
    "zh": ("头", "前一个位置上的权重", "孪生数字上的权重", "屏蔽后“前一个”全对", "屏蔽后“孪生”全对"),
}
HEAD = {"en": "head {head}", "zh": "头 {head}"}  # numbered from 0, as the code indexes them
NONE = {"en": "none silenced", "zh": "不屏蔽"}
CONTROL = {
    "en": (
        "model",
        "*before* all right",
        "*twin* all right",
        "two heads (the explorer's)",
        "one head, trained the same way",
    ),
    "zh": ("模型", "“前一个”全对", "“孪生”全对", "两个头（探索器里的模型）", "一个头，训练方法相同"),
}


def _model_module():
    sys.path.insert(0, str(SCRIPTS))
    try:
        import lookup_model
    finally:
        sys.path.pop(0)
    return lookup_model


def _rounded(values: object) -> object:
    """Nested lists of floats with 9 significant digits: enough for float32 to round-trip."""
    if isinstance(values, list):
        return [_rounded(v) for v in values]
    return float(f"{values:.9g}")


def weights_json() -> dict:
    lm = _model_module()
    state = torch.load(lm.WEIGHTS, weights_only=True)
    return {
        "config": {
            "length": lm.LENGTH,
            "vocab": lm.VOCAB,
            "width": lm.WIDTH,
            "heads": lm.HEADS,
            "layers": lm.LAYERS,
            "questions": lm.QUESTIONS,  # the read-out's scores, in order: question -> how many
        },
        "weights": {name: _rounded(tensor.tolist()) for name, tensor in state.items()},
    }


@cache
def measurements() -> tuple[tuple[int | None, dict[str, float], dict[str, float]], ...]:
    """Per head (and once with none silenced): where it looks, and each question's accuracy without it."""
    lm = _model_module()
    model = lm.load()
    held_out = lm.batch(2000, torch.Generator().manual_seed(1), training=False)
    rows = [(None, {}, lm.accuracy(model, held_out))]
    for (layer, head), scores in lm.head_scores(model, held_out).items():
        rows.append((head, scores, lm.accuracy(lm.ablated(model, layer, head), held_out)))
    return tuple(rows)


def head_table(lang: str) -> str:
    """The Markdown table of what each head does, in `lang`."""
    headings = HEADINGS.get(lang, HEADINGS["en"])
    lines = ["| " + " | ".join(headings) + " |", "|---|---:|---:|---:|---:|"]
    for head, scores, right in measurements():
        if head is None:
            label, before, twin = NONE.get(lang, NONE["en"]), "", ""
        else:
            label = HEAD.get(lang, HEAD["en"]).format(head=head)
            before, twin = f"{scores['before']:.0%}", f"{scores['twin']:.0%}"
        lines.append(f"| {label} | {before} | {twin} | {right['before']:.1%} | {right['twin']:.1%} |")
    return "\n".join(lines)


@cache
def control() -> tuple[dict[str, float], dict[str, float]]:
    """Each question's accuracy, for the two-head model and for its one-head control."""
    lm = _model_module()
    held_out = lm.batch(2000, torch.Generator().manual_seed(1), training=False)
    return lm.accuracy(lm.load(), held_out), lm.accuracy(lm.load(heads=1), held_out)


def control_table(lang: str) -> str:
    """The Markdown table comparing the model with its one-head control, in `lang`."""
    model, before, twin, two, one = CONTROL.get(lang, CONTROL["en"])
    lines = [f"| {model} | {before} | {twin} |", "|---|---:|---:|"]
    for label, right in zip((two, one), control(), strict=True):
        lines.append(f"| {label} | {right['before']:.1%} | {right['twin']:.1%} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config: MkDocsConfig, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    if PLACEHOLDER in markdown:
        markdown = markdown.replace(PLACEHOLDER, head_table(language(config)))
    if CONTROL_PLACEHOLDER in markdown:
        markdown = markdown.replace(CONTROL_PLACEHOLDER, control_table(language(config)))
    return markdown


@event_priority(-200)  # once, after the last language build
def on_post_build(config: MkDocsConfig) -> None:
    if nested_language_build(config):
        return
    target = Path(config.site_dir) / TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(weights_json(), separators=(",", ":")), encoding="utf-8")
