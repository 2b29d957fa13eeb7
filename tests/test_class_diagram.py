"""The full class diagram is generated from the package and names every public member."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import torch

import mha

DOCS = Path(__file__).resolve().parents[1] / "docs"
sys.path.insert(0, str(DOCS / "_hooks"))
import class_diagram  # noqa: E402

PAGES = sorted(DOCS.glob("class-diagram*.md"))
PUBLIC_CLASSES = {name for name in mha.__all__ if isinstance(getattr(mha, name), type)} | {"Dispatch"}


def parse_diagram(text: str) -> dict[str, dict[str, set[str]]]:
    """{class: {"attributes": {...}, "methods": {...}}} from mermaid classDiagram source."""
    classes: dict[str, dict[str, set[str]]] = {}
    for name, body in re.findall(r"class (\w+) \{(.*?)\}", text, re.S):
        members: dict[str, set[str]] = {"attributes": set(), "methods": set()}
        for line in filter(None, (ln.strip() for ln in body.splitlines())):
            line = line.lstrip("+-#~")
            if "(" in line:
                members["methods"].add(line.split("(")[0])
            else:
                members["attributes"].add(line.split()[-1])
        classes[name] = members
    for a, b in re.findall(r"^\s*(\w+) [*o.]-[-.>]+ (\w+)", text, re.M):
        assert a in classes and b in classes, f"relation {a} - {b} names an undeclared class"
    return classes


def test_diagram_names_every_public_class_and_member():
    diagram = parse_diagram(class_diagram.generate())
    assert set(diagram) == PUBLIC_CLASSES
    for cls, obj in class_diagram.samples().items():
        drawn = diagram[cls.__name__]
        for member in drawn["attributes"] | drawn["methods"]:
            assert hasattr(obj, member), f"{cls.__name__}.{member} is drawn but does not exist"
        for member in drawn["methods"]:
            assert callable(getattr(obj, member)), f"{cls.__name__}.{member} is drawn as a method"
        module_api = set(dir(torch.nn.Module)) | {"training"}  # every nn.Module has these
        public = {n for n in dir(obj) if not n.startswith("_") and n not in module_api}
        if isinstance(obj, torch.nn.Module):
            public |= {"forward"} | set(obj._modules)
        missing = public - drawn["attributes"] - drawn["methods"]
        assert not missing, f"public members of {cls.__name__} missing from the diagram: {missing}"


def test_diagram_draws_the_tutorials_composition():
    text = class_diagram.generate()
    assert "MultiHeadAttention *-- Attention : attention" in text
    assert "Attention o-- RotaryEmbedding : positional" in text
    assert "MultiHeadAttention ..> KVCache : new_cache()" in text


def test_a_new_member_appears_without_editing_the_docs(monkeypatch):
    monkeypatch.setattr(mha.Attention, "describe", lambda self, verbose: "…", raising=False)
    assert "+describe(verbose)" in class_diagram.generate()


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_pages_use_the_generated_diagram(page):
    text = page.read_text(encoding="utf-8")
    assert class_diagram.MARKER in text
    assert "classDiagram" not in text, "a hand-written diagram would drift from the code"


def test_attributes_that_default_to_none_show_their_declared_type():
    """`+None q_proj_weight` says nothing: the type comes from the code's annotations."""
    source = class_diagram.generate()
    attributes = [line.strip() for line in source.splitlines() if line.strip().startswith("+") and "(" not in line]
    assert not [a for a in attributes if a.startswith("+None ")]
    assert "+SequenceLayout context_parallel" in source and "+Tensor token_mask" in source
