"""The attention explorer: the trained demo model, and the page that runs it in the browser."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS / "_scripts"))
import demo_model  # noqa: E402
from site_fixtures import LANGUAGES  # noqa: E402


def test_committed_weights_reverse_held_out_sequences():
    model = demo_model.load()
    held_out = demo_model.batch(2000, torch.Generator().manual_seed(7), training=False)
    assert demo_model.held_out(held_out).all()
    assert demo_model.accuracy(model, held_out) >= 0.99
    assert demo_model.WEIGHTS.stat().st_size < 2 * 2**20


def test_layer_two_attends_along_the_anti_diagonal():
    """What the guide and the explorer say the heads learned."""
    model = demo_model.load()
    digits = demo_model.batch(300, torch.Generator().manual_seed(8), training=False)
    with torch.no_grad():
        _, weights = model(digits)
    mirror = torch.eye(8).flip(-1).bool()
    for head in range(2):
        assert weights[1][:, head][:, mirror].mean() > 0.8
        assert weights[0][:, head].max(-1).values.mean() < 0.5  # layer 1: spread out


def _weights(digits: str, layer: int, head: int) -> torch.Tensor:
    model = demo_model.load()
    with torch.no_grad():
        _, weights = model(torch.tensor([[int(c) for c in digits]]))
    return weights[layer][0, head]  # (8, 8): row = query


def _check_page_weights(page, digits: str, layer: int, head: int, token: int) -> None:
    page.wait_for_function(f"document.querySelector('.mha-explorer').dataset.ready === '{digits}'")
    page.select_option("[data-explorer=layer]", index=layer)  # by index: the labels are 1-based numbers
    page.select_option("[data-explorer=head]", index=head)
    page.locator(f"[data-token='{token}']").focus()
    got = page.eval_on_selector_all("[data-token]", "els => els.map(e => [+e.dataset.token, +e.dataset.weight])")
    expected = _weights(digits, layer, head)[token]
    assert [i for i, _ in got] == list(range(8))
    torch.testing.assert_close(torch.tensor([w for _, w in got]), expected, atol=1e-3, rtol=0)
    assert page.locator("[data-explorer=output]").inner_text().replace(" ", "") == digits[::-1]


@pytest.mark.browser
@pytest.mark.parametrize("lang", LANGUAGES)
def test_explorer_weights_equal_the_package_weights(server, browser, lang):
    page, errors = browser.open(f"{server}{LANGUAGES[lang]}explorer/")
    # a prepared input
    page.select_option("[data-explorer=examples]", value="27182818")
    _check_page_weights(page, "27182818", layer=1, head=0, token=2)
    _check_page_weights(page, "27182818", layer=0, head=1, token=6)
    # an input typed by the reader
    page.locator("[data-explorer=input]").fill("90817263")
    _check_page_weights(page, "90817263", layer=1, head=1, token=0)
    # hovering selects too; a bad input is refused with a message, the last good one kept
    page.locator("[data-token='5']").hover()
    assert page.locator("[data-token='5']").get_attribute("aria-pressed") == "true"
    page.locator("[data-explorer=input]").fill("12345abc")
    assert page.locator("[data-explorer=problem]").is_visible()
    assert page.evaluate("document.querySelector('.mha-explorer').dataset.ready") == "90817263"
    assert not errors and not browser.blocked
    page.context.close()
