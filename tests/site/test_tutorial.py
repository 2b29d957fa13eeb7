"""The tutorial's from-scratch classes are the library's function, and its figures are current."""

from __future__ import annotations

import doctest
import re
import sys
from pathlib import Path

import pytest
import torch

import mha
from helpers import FLOAT32, assert_close

DOCS = Path(__file__).resolve().parents[2] / "docs"
PAGES = {"en": DOCS / "tutorial.md", "zh": DOCS / "tutorial.zh.md"}


def tutorial_classes(page: Path) -> dict[str, type]:
    """Run the page's import block and its two class definitions; return the classes."""
    examples = doctest.DocTestParser().get_examples(page.read_text(encoding="utf-8"))
    namespace: dict = {}
    for example in examples:
        source = example.source
        if source.startswith(("import ", "class Attention(", "class MultiHeadAttention(")):
            exec(compile(source, str(page), "exec"), namespace)
    return {name: namespace[name] for name in ("Attention", "MultiHeadAttention")}


@pytest.fixture(params=list(PAGES), scope="module")
def classes(request) -> dict[str, type]:
    return tutorial_classes(PAGES[request.param])


def test_both_languages_teach_the_same_code():
    def code(page: Path) -> list[str]:
        examples = doctest.DocTestParser().get_examples(page.read_text(encoding="utf-8"))
        return [e.source.split("#")[0] for e in examples if e.source.startswith("class ")]

    assert code(PAGES["en"]) == code(PAGES["zh"])


@pytest.mark.parametrize(("b", "s", "h", "n_h"), [(2, 3, 20, 5), (3, 7, 12, 4), (1, 11, 6, 1)])
def test_from_scratch_equals_library_on_copied_weights(classes, b, s, h, n_h):
    scratch = classes["MultiHeadAttention"](h, n_h, 0.1).eval()
    library = mha.MultiHeadAttention(h, n_h, 0.1).eval()
    library.load_state_dict(scratch.state_dict())
    x = torch.randn(b, s, h, dtype=torch.float64)
    scratch, library = scratch.double(), library.double()
    assert_close(library(x), scratch(x))
    _, weights = library(x, need_weights=True)
    q, k, v = scratch.q_proj(x), scratch.k_proj(x), scratch.v_proj(x)
    _, expected = scratch.attention(q, k, v)
    assert_close(weights, expected)


def test_from_scratch_gradients_equal_library(classes):
    scratch = classes["MultiHeadAttention"](12, 3, 0.0)
    library = mha.MultiHeadAttention(12, 3, 0.0)
    library.load_state_dict(scratch.state_dict())
    x = torch.randn(2, 5, 12)
    scratch(x).square().sum().backward()
    library(x).square().sum().backward()
    for (name, a), (_, b) in zip(scratch.named_parameters(), library.named_parameters(), strict=True):
        assert_close(b.grad, a.grad, FLOAT32, msg=name)


def test_figures_script_matches_the_committed_figures(tmp_path):
    sys.path.insert(0, str(DOCS / "_scripts"))
    try:
        import tutorial_figures
    finally:
        sys.path.pop(0)
    tutorial_figures.main(tmp_path)
    for name in tutorial_figures.render():
        committed = DOCS / "_snippets" / "figures" / name
        assert (tmp_path / name).read_text(encoding="utf-8") == committed.read_text(encoding="utf-8"), name
    zh = (tmp_path / "flow.zh.html").read_text(encoding="utf-8")
    assert "拆分注意力头" in zh and "split heads" not in zh and "context:" not in zh


@pytest.mark.parametrize("lang", list(PAGES))
def test_head_split_figure_draws_the_code_beside_it(lang):
    """The figure's h and n_h are the example's `hidden_size, num_heads`, and its caption's
    "head 1 holds features 4-7" is what the doctest's indexing checks."""
    sys.path.insert(0, str(DOCS / "_scripts"))
    try:
        import tutorial_figures
    finally:
        sys.path.pop(0)
    text = PAGES[lang].read_text(encoding="utf-8")
    assigned = re.search(r">>> b, s, hidden_size, num_heads = (\d+), (\d+), (\d+), (\d+)", text)
    assert assigned, "the head-split example moved"
    assert (int(assigned[3]), int(assigned[4])) == (tutorial_figures.HIDDEN_SIZE, tutorial_figures.NUM_HEADS)
    d = tutorial_figures.HEAD_DIM
    assert f"x[0, 2, {d}:{2 * d}])" in text  # head 1 of token 2 = features d..2d-1
    figure = (DOCS / "_snippets" / "figures" / f"heads.{lang}.html").read_text(encoding="utf-8")
    assert f"{d}–{2 * d - 1}" in figure and f"n_h = {tutorial_figures.NUM_HEADS}" in figure
    # one coloured cell per feature, twice (the token, then the concatenation), plus the heads' cells
    assert figure.count('class="fig-cell') == 3 * tutorial_figures.HIDDEN_SIZE


def test_attention_mask_blocks_exactly_the_false_keys(classes):
    """The tutorial's `mask` (True = may attend) gives the library's answer, with a per-query mask."""
    attention = classes["Attention"](12, 3)
    q, k, v = torch.randn(2, 5, 12), torch.randn(2, 7, 12), torch.randn(2, 7, 12)
    mask = torch.rand(2, 1, 5, 7) > 0.3
    mask[..., 0] = True  # no query without a key: the from-scratch class would give NaN
    context, weights = attention(q, k, v, mask=mask)
    assert torch.all(weights[~mask.expand_as(weights)] == 0)
    heads = attention.split_heads
    reference = torch.nn.functional.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    assert_close(context, attention.merge_heads(reference))


@pytest.mark.parametrize("lang", list(PAGES))
def test_transformer_page_starts_from_the_tutorials_classes(lang):
    """docs/transformer-block*.md pastes the tutorial's two classes; they must not drift apart."""
    block = PAGES[lang].with_name(PAGES[lang].name.replace("tutorial", "transformer-block"))

    def classes(page: Path) -> list[str]:
        examples = doctest.DocTestParser().get_examples(page.read_text(encoding="utf-8"))
        return [e.source for e in examples if e.source.startswith(("class Attention(", "class MultiHeadAttention("))]

    assert classes(block) == classes(PAGES[lang]) and len(classes(block)) == 2
