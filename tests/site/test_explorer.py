"""The attention explorer: the trained look-up model, what its page says about it, and the widget."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

DOCS = Path(__file__).resolve().parents[2] / "docs"
sys.path.insert(0, str(DOCS / "_scripts"))
sys.path.insert(0, str(DOCS / "_hooks"))
import explorer_weights  # noqa: E402
import lookup_model  # noqa: E402
from site_fixtures import LANGUAGES, PHONE  # noqa: E402

from helpers import Tolerance, assert_close  # noqa: E402


def _held_out(n: int = 1000, seed: int = 7) -> torch.Tensor:
    digits = lookup_model.batch(n, torch.Generator().manual_seed(seed), training=False)
    assert lookup_model.held_out(digits).all() and lookup_model.valid(digits).all()
    return digits


def test_task_answers():
    digits = torch.tensor([[3, 1, 4, 1, 5, 3, 4, 5]])
    expected = lookup_model.answers(digits)
    assert expected["before"].tolist() == [[5, 3, 1, 4, 1, 5, 3, 4]]
    assert expected["twin"].tolist() == [[5, 3, 6, 1, 7, 0, 2, 4]]
    assert lookup_model.valid(digits).all()
    assert not lookup_model.valid(torch.tensor([[3, 3, 3, 1, 4, 1, 5, 5], [3, 1, 4, 1, 5, 3, 4, 9]])).any()


@pytest.mark.parametrize("suffix", [".md", ".zh.md"])
def test_the_pages_worked_example_is_the_tasks(suffix):
    """The table of the task on the page: its answers are lookup_model.answers of its input."""
    text = (DOCS / f"explorer{suffix}").read_text(encoding="utf-8")
    rows = [line.split("|")[2:-1] for line in text.splitlines() if re.match(r"\| [^|]+( \| \d){8} \|$", line)]
    digits, before, twin = (torch.tensor([[int(c) for c in row]]) for row in rows[1:4])
    assert rows[0] == [f" {i} " for i in range(8)]  # the positions, from 0
    expected = lookup_model.answers(digits)
    assert before.tolist() == expected["before"].tolist() and twin.tolist() == expected["twin"].tolist()


def test_committed_weights_answer_held_out_inputs_exactly():
    model = lookup_model.load()
    assert lookup_model.accuracy(model, _held_out()) == {"before": 1.0, "twin": 1.0}
    assert lookup_model.WEIGHTS.stat().st_size < 2**20


def _jobs() -> dict[str, int]:
    """Which head does which look-up, from the committed weights: question -> head."""
    scores = lookup_model.head_scores(lookup_model.load(), _held_out())
    return {
        question: max(range(lookup_model.HEADS), key=lambda h: scores[0, h][question])
        for question in ("before", "twin")
    }


def test_each_head_does_one_job_and_only_it():
    """The explorer's proof, on the committed weights: a double dissociation.

    Each head looks where one question's answer is, and silencing it loses that
    question on (almost) every input while the other question stays right.
    """
    model, digits = lookup_model.load(), _held_out()
    scores, jobs = lookup_model.head_scores(model, digits), _jobs()
    assert sorted(jobs.values()) == list(range(lookup_model.HEADS))  # two questions, two different heads
    for question, head in jobs.items():
        other = "twin" if question == "before" else "before"
        assert scores[0, head][question] > 0.9 and scores[0, head][other] < 0.2
        silenced = lookup_model.accuracy(lookup_model.ablated(model, 0, head), digits)
        assert silenced[question] < 0.05 and silenced[other] > 0.99


def test_one_head_learns_one_question_only():
    """The control the page shows: the same model with a single head, trained the same way."""
    assert lookup_model.ONE_HEAD_WEIGHTS.stat().st_size < 2**20
    right = lookup_model.accuracy(lookup_model.load(heads=1), _held_out())
    assert max(right.values()) > 0.99 and min(right.values()) < 0.05
    table = explorer_weights.control_table("en").splitlines()
    assert table[2].endswith("| 100.0% | 100.0% |") and table[3].startswith("| one head")


@pytest.mark.parametrize(
    ("suffix", "by_position", "by_content"),
    [
        (".md", "**Head {} looks by position.**", "**Head {} looks by content.**"),
        (".zh.md", "**头 {} 按位置看。**", "**头 {} 按内容看。**"),
    ],
)
def test_the_page_names_the_heads_the_weights_use(suffix, by_position, by_content):
    jobs = _jobs()
    text = (DOCS / f"explorer{suffix}").read_text(encoding="utf-8")
    assert by_position.format(jobs["before"]) in text and by_content.format(jobs["twin"]) in text


@pytest.mark.parametrize("suffix", [".md", ".zh.md"])
def test_the_page_examples_are_puzzles_the_model_answers(suffix):
    text = (DOCS / f"explorer{suffix}").read_text(encoding="utf-8")
    examples = re.findall(r'<option value="(\d{8})"', text)
    assert len(examples) >= 5
    digits = torch.tensor([[int(c) for c in e] for e in examples])
    assert lookup_model.valid(digits).all()
    assert lookup_model.accuracy(lookup_model.load(), digits) == {"before": 1.0, "twin": 1.0}


def test_head_table_is_computed_from_the_weights():
    table = explorer_weights.head_table("en")
    rows = table.splitlines()[2:]
    assert len(rows) == 1 + lookup_model.LAYERS * lookup_model.HEADS
    assert rows[0].endswith("| 100.0% | 100.0% |")  # none silenced: every answer right
    assert "| head 1 |" in table  # numbered from 0, as the code indexes them
    assert "头 1" in explorer_weights.head_table("zh")


def _weights(digits: str, head: int, layer: int = 0) -> torch.Tensor:
    model = lookup_model.load()
    with torch.no_grad():
        _, weights = model(torch.tensor([[int(c) for c in digits]]))
    return weights[layer][0, head]  # (8, 8): row = query


def _check_page_weights(page, digits: str, head: int, token: int) -> None:
    page.wait_for_function(f"document.querySelector('.mha-explorer').dataset.ready === '{digits}'")
    page.select_option("[data-explorer=head]", index=head)  # the labels are the indices, from 0
    page.locator(f"[data-token='{token}']").focus()
    got = page.eval_on_selector_all("[data-token]", "els => els.map(e => [+e.dataset.token, +e.dataset.weight])")
    expected = _weights(digits, head)[token]
    assert [i for i, _ in got] == list(range(8))
    assert_close(torch.tensor([w for _, w in got]), expected, Tolerance(atol=1e-3, rtol=0))  # the page's JS forward pass
    for question, answers in lookup_model.answers(torch.tensor([[int(c) for c in digits]])).items():
        for shown in ("expected", "output"):
            text = page.locator(f"[data-explorer={shown}-{question}]").inner_text()
            assert text.split() == [str(a) for a in answers[0].tolist()], (shown, question)
    # rows are labelled by position and digit, so repeated digits stay apart
    labels = page.eval_on_selector_all("[data-explorer=heatmap] th[scope=row]", "els => els.map(e => e.textContent)")
    assert labels == [f"{i}: {d}" for i, d in enumerate(digits)]  # positions from 0, as in the code


@pytest.mark.browser
@pytest.mark.parametrize("lang", LANGUAGES)
def test_explorer_weights_equal_the_package_weights(server, browser, lang):
    page, errors = browser.open(f"{server}{LANGUAGES[lang]}explorer/")
    # a prepared input
    page.select_option("[data-explorer=examples]", value="27182817")
    _check_page_weights(page, "27182817", head=0, token=5)
    _check_page_weights(page, "27182817", head=1, token=2)
    # an input typed by the reader, with spaces and commas; the dropdown says so
    page.locator("[data-explorer=input]").fill("5 2 9 0, 0 9 2 5")
    _check_page_weights(page, "52900925", head=1, token=4)
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
    page.close()


@pytest.mark.browser
def test_one_colour_scale_and_a_phone(server, browser):
    """A digit and its heatmap cell with the same weight have the same colour; nothing spills on a phone."""
    page, errors = browser.open(f"{server}explorer/", width=PHONE)
    page.wait_for_function("document.querySelector('.mha-explorer').dataset.ready === '31415345'")
    page.locator("[data-token='4']").focus()
    token = page.eval_on_selector("[data-token='2']", "e => getComputedStyle(e).backgroundColor")
    cell = page.eval_on_selector("tr[data-row='4'] td:nth-of-type(3)", "e => getComputedStyle(e).backgroundColor")
    assert token == cell
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE
    assert not errors and not browser.blocked
    page.close()


@pytest.mark.parametrize("page", ["index", "tutorial"])
@pytest.mark.parametrize("suffix", [".md", ".zh.md"])
def test_home_and_tutorial_link_the_explorer(page, suffix):
    assert "](explorer.md)" in (DOCS / f"{page}{suffix}").read_text(encoding="utf-8")
