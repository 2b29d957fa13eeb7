"""The attention explorer: the trained look-up model, what its page says about it, and the widget."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS / "_scripts"))
sys.path.insert(0, str(DOCS / "_hooks"))
import explorer_weights  # noqa: E402
import lookup_model  # noqa: E402
from helpers import Tolerance, assert_close  # noqa: E402
from site_fixtures import LANGUAGES, PHONE  # noqa: E402


def _held_out(n: int = 1000, seed: int = 7) -> torch.Tensor:
    digits = lookup_model.batch(n, torch.Generator().manual_seed(seed), training=False)
    assert lookup_model.held_out(digits).all() and lookup_model.valid(digits).all()
    return digits


def test_task_answers():
    digits = torch.tensor([[3, 1, 4, 5, 4, 3, 5, 1]])
    assert lookup_model.answers(digits).tolist() == [[1, 4, 5, 3, 5, 1, 3, 4]]
    assert lookup_model.valid(digits).all()
    assert not lookup_model.valid(torch.tensor([[3, 3, 4, 5, 4, 3, 5, 1], [3, 1, 4, 5, 4, 3, 5, 9]])).any()


def test_committed_weights_answer_held_out_inputs_exactly():
    model = lookup_model.load()
    assert lookup_model.accuracy(model, _held_out()) == 1.0
    assert lookup_model.WEIGHTS.stat().st_size < 2**20


def test_heads_do_what_the_page_says():
    """The explorer page's prose, checked against the committed weights."""
    model, digits = lookup_model.load(), _held_out()
    scores = lookup_model.head_scores(model, digits)
    for head in range(2):
        # layer 2 looks up by content: each query reads the list digit after its match
        assert scores[1, head]["after match"] > 0.8
        assert lookup_model.accuracy(lookup_model.ablated(model, 1, head), digits, slice(4, 8)) > 0.95
        # layer 1: either head silenced, the queries fail
        assert lookup_model.accuracy(lookup_model.ablated(model, 0, head), digits, slice(4, 8)) < 0.7
    # the two layer-1 heads look at different places
    with torch.no_grad():
        _, weights = model(digits)
    assert (weights[0][:, 0] - weights[0][:, 1]).abs().sum(-1).mean() > 0.5


def test_head_table_is_computed_from_the_weights():
    table = explorer_weights.head_table("en")
    rows = table.splitlines()[2:]
    assert len(rows) == 1 + lookup_model.LAYERS * lookup_model.HEADS
    assert rows[0].endswith("| 100.0% | 100.0% |")  # none silenced: every answer right
    assert "| layer 0, head 1 |" in table  # numbered from 0, as the code indexes them
    assert "层 0 头 1" in explorer_weights.head_table("zh")


def _weights(digits: str, layer: int, head: int) -> torch.Tensor:
    model = lookup_model.load()
    with torch.no_grad():
        _, weights = model(torch.tensor([[int(c) for c in digits]]))
    return weights[layer][0, head]  # (8, 8): row = query


def _check_page_weights(page, digits: str, layer: int, head: int, token: int) -> None:
    page.wait_for_function(f"document.querySelector('.mha-explorer').dataset.ready === '{digits}'")
    page.select_option("[data-explorer=layer]", index=layer)  # the labels are the indices, from 0
    page.select_option("[data-explorer=head]", index=head)
    page.locator(f"[data-token='{token}']").focus()
    got = page.eval_on_selector_all("[data-token]", "els => els.map(e => [+e.dataset.token, +e.dataset.weight])")
    expected = _weights(digits, layer, head)[token]
    assert [i for i, _ in got] == list(range(8))
    assert_close(torch.tensor([w for _, w in got]), expected, Tolerance(atol=1e-3, rtol=0))  # the page's JS forward pass
    answers = "".join(map(str, lookup_model.answers(torch.tensor([[int(c) for c in digits]]))[0].tolist()))
    assert page.locator("[data-explorer=expected]").inner_text().replace(" ", "").replace("\n", "") == answers
    assert page.locator("[data-explorer=output]").inner_text().replace(" ", "").replace("\n", "") == answers
    # rows are labelled by position and digit, so repeated digits stay apart
    labels = page.eval_on_selector_all("[data-explorer=heatmap] th[scope=row]", "els => els.map(e => e.textContent)")
    assert labels == [f"{i}: {d}" for i, d in enumerate(digits)]  # positions from 0, as in the code


@pytest.mark.browser
@pytest.mark.parametrize("lang", LANGUAGES)
def test_explorer_weights_equal_the_package_weights(server, browser, lang):
    page, errors = browser.open(f"{server}{LANGUAGES[lang]}explorer/")
    # a prepared input
    page.select_option("[data-explorer=examples]", value="27188271")
    _check_page_weights(page, "27188271", layer=1, head=0, token=5)
    _check_page_weights(page, "27188271", layer=0, head=1, token=2)
    # an input typed by the reader, with spaces and commas; the dropdown says so
    page.locator("[data-explorer=input]").fill("5 2 9 0, 0 9 2 5")
    _check_page_weights(page, "52900925", layer=1, head=1, token=4)
    assert page.eval_on_selector("[data-explorer=examples]", "e => e.value") == ""
    assert page.eval_on_selector("[data-explorer=examples]", "e => e.selectedOptions[0].textContent").strip()
    # typing an example selects it in the dropdown
    page.locator("[data-explorer=input]").fill("1234 1234")
    page.wait_for_function("document.querySelector('.mha-explorer').dataset.ready === '12341234'")
    assert page.eval_on_selector("[data-explorer=examples]", "e => e.value") == "12341234"
    # hovering selects too; a bad input is refused with a message, the last good one kept
    page.locator("[data-token='5']").hover()
    assert page.locator("[data-token='5']").get_attribute("aria-pressed") == "true"
    for bad in ("123456789", "11234123", "12349999"):
        page.locator("[data-explorer=input]").fill(bad)
        assert page.locator("[data-explorer=problem]").is_visible()
        assert page.evaluate("document.querySelector('.mha-explorer').dataset.ready") == "12341234"
    assert not errors and not browser.blocked
    page.context.close()


@pytest.mark.browser
def test_one_colour_scale_and_a_phone(server, browser):
    """A digit and its heatmap cell with the same weight have the same colour; nothing spills on a phone."""
    page, errors = browser.open(f"{server}explorer/", width=PHONE)
    page.wait_for_function("document.querySelector('.mha-explorer').dataset.ready === '31454351'")
    page.locator("[data-token='4']").focus()
    token = page.eval_on_selector("[data-token='2']", "e => getComputedStyle(e).backgroundColor")
    cell = page.eval_on_selector("tr[data-row='4'] td:nth-of-type(3)", "e => getComputedStyle(e).backgroundColor")
    assert token == cell
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE
    assert not errors and not browser.blocked
    page.context.close()


@pytest.mark.parametrize("page", ["index", "tutorial"])
@pytest.mark.parametrize("suffix", [".md", ".zh.md"])
def test_home_and_tutorial_link_the_explorer(page, suffix):
    assert "](explorer.md)" in (DOCS / f"{page}{suffix}").read_text(encoding="utf-8")
