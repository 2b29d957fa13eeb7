"""MkDocs hook: export the demo model's weights for the attention explorer.

The explorer page (docs/explorer.md) runs the digit-reversing model of
docs/_scripts/demo_model.py in the browser, in plain JavaScript. This hook
writes the committed weights (docs/_data/reverse.pt) as JSON next to the
explorer's script, `assets/explorer/reverse.json`, at every build: the site
never trains, and the page loads nothing from another host.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.plugins import event_priority
from site_build import nested_language_build

SCRIPTS = Path(__file__).resolve().parents[1] / "_scripts"
TARGET = Path("assets") / "explorer" / "reverse.json"


def _rounded(values: object) -> object:
    """Nested lists of floats with 9 significant digits: enough for float32 to round-trip."""
    if isinstance(values, list):
        return [_rounded(v) for v in values]
    return float(f"{values:.9g}")


def weights_json() -> dict:
    sys.path.insert(0, str(SCRIPTS))
    try:
        import demo_model
    finally:
        sys.path.pop(0)
    state = torch.load(demo_model.WEIGHTS, weights_only=True)
    return {
        "config": {"length": demo_model.LENGTH, "vocab": demo_model.VOCAB, "width": demo_model.WIDTH,
                   "heads": demo_model.HEADS, "layers": demo_model.LAYERS},
        "weights": {name: _rounded(tensor.tolist()) for name, tensor in state.items()},
    }


@event_priority(-200)  # once, after the last language build
def on_post_build(config: MkDocsConfig) -> None:
    if nested_language_build(config):
        return
    target = Path(config.site_dir) / TARGET
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(weights_json(), separators=(",", ":")), encoding="utf-8")
