"""MkDocs hook: the attention explorer's weights, and the numbers its page quotes.

The explorer page (docs/explorer.md) runs the look-up model of
docs/_scripts/lookup_model.py in the browser, in plain JavaScript. This hook
writes the committed weights (docs/_data/lookup.pt) as JSON next to the
explorer's script, `assets/explorer/lookup.json`, at every build: the site
never trains, and the page loads nothing from another host.

It also measures the heads on held-out inputs and puts the table in place of
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
HEADINGS = {
    "en": (
        "head",
        "looks at the next list digit",
        "looks at the digit after the match",
        "silenced: list right",
        "silenced: queries right",
    ),
    "zh": ("头", "看列表中的下一个数字", "看匹配数字之后的数字", "屏蔽后：列表全对", "屏蔽后：查询全对"),
}
HEAD = {"en": "layer {layer}, head {head}", "zh": "层 {layer} 头 {head}"}  # numbered from 0, as the code indexes them
NONE = {"en": "none silenced", "zh": "不屏蔽"}


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
        "config": {"length": lm.LENGTH, "vocab": lm.VOCAB, "width": lm.WIDTH, "heads": lm.HEADS, "layers": lm.LAYERS},
        "weights": {name: _rounded(tensor.tolist()) for name, tensor in state.items()},
    }


@cache
def measurements() -> tuple[tuple[str | None, dict[str, float], float, float], ...]:
    """Per head (and once with none silenced): its pattern scores and the accuracy without it."""
    lm = _model_module()
    model = lm.load()
    held_out = lm.batch(2000, torch.Generator().manual_seed(1), training=False)
    rows = [(None, {}, lm.accuracy(model, held_out, slice(0, 4)), lm.accuracy(model, held_out, slice(4, 8)))]
    for (layer, head), scores in lm.head_scores(model, held_out).items():
        silenced = lm.ablated(model, layer, head)
        rows.append(
            (
                f"{layer},{head}",
                scores,
                lm.accuracy(silenced, held_out, slice(0, 4)),
                lm.accuracy(silenced, held_out, slice(4, 8)),
            )
        )
    return tuple(rows)


def head_table(lang: str) -> str:
    """The Markdown table of what each head does, in `lang`."""
    headings = HEADINGS.get(lang, HEADINGS["en"])
    lines = ["| " + " | ".join(headings) + " |", "|---|---:|---:|---:|---:|"]
    for name, scores, lists, queries in measurements():
        if name is None:
            label, next_, after = NONE.get(lang, NONE["en"]), "", ""
        else:
            layer, head = name.split(",")
            label = HEAD.get(lang, HEAD["en"]).format(layer=layer, head=head)
            next_, after = f"{scores['next']:.0%}", f"{scores['after match']:.0%}"
        lines.append(f"| {label} | {next_} | {after} | {lists:.1%} | {queries:.1%} |")
    return "\n".join(lines)


def on_page_markdown(markdown: str, page, config: MkDocsConfig, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    if PLACEHOLDER in markdown:
        markdown = markdown.replace(PLACEHOLDER, head_table(language(config)))
    return markdown


@event_priority(-200)  # once, after the last language build
def on_post_build(config: MkDocsConfig) -> None:
    if nested_language_build(config):
        return
    target = Path(config.site_dir) / TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(weights_json(), separators=(",", ":")), encoding="utf-8")
