"""The API reference as a reader sees it: one entry per return value, one signature per function,
no empty columns, the site's shape letters, nothing clipped on a phone."""

from __future__ import annotations

import re

import pytest
from site_fixtures import PHONE

API_PAGES = ["attention", "cache", "functional", "masks", "interop", "rotary", "parallel", "hf"]


def _section(html: str, object_id: str) -> str:
    """The HTML of one documented object, up to the next object's heading."""
    start = html.index(f'id="{object_id}"')
    end = html.find('class="doc doc-heading"', html.index(">", start) + 1)
    return html[start : end if end > 0 else None]


def _returns_items(section: str) -> list[str]:
    returns = section.split("Returns:", 1)[1].split("</ul>", 1)[0]
    return re.findall(r"<li\b", returns)


def test_multi_line_returns_is_one_item(site):
    html = (site / "api" / "cache" / "index.html").read_text(encoding="utf-8")
    update = _section(html, "mha.KVCache.update")
    assert len(_returns_items(update)) == 1
    assert "tuple[" in re.sub(r"<[^>]+>|\s", "", update.split("Returns:", 1)[1])  # the annotation's type


def test_one_signature_per_function_and_no_empty_columns(site):
    for name in API_PAGES:
        html = (site / "api" / name / "index.html").read_text(encoding="utf-8")
        for forward in ("mha.Attention.forward", "mha.MultiHeadAttention.forward"):
            if f'id="{forward}"' in html:
                assert _section(html, forward).count("doc-signature") == 1, forward
        assert "<th>Type</th>" not in html and not re.search(r"<td>\s*</td>", html)


def test_shape_letters_are_the_sites(site):
    text = "".join((site / "api" / name / "index.html").read_text(encoding="utf-8") for name in API_PAGES)
    assert not re.search(r"\(b, n, ", text)


@pytest.mark.browser
@pytest.mark.parametrize("name", ["attention", "cache"])
def test_parameters_fit_a_phone(server, browser, name):
    page, errors = browser.open(f"{server}api/{name}/", width=PHONE)
    clipped = page.evaluate("""() => [...document.querySelectorAll('.doc-section-item, .doc-contents > p')]
        .filter((e) => e.getBoundingClientRect().right > innerWidth + 1).map((e) => e.textContent.slice(0, 60))""")
    assert clipped == []
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE
    assert not errors and not browser.blocked
    page.close()
