"""The class diagram on the site names only real members, and every public method."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch

import mha
from mha.functional import Dispatch

DOCS = Path(__file__).resolve().parents[1] / "docs"
PAGES = sorted(DOCS.glob("class-diagram*.md"))


def parse_diagram(text: str) -> dict[str, dict[str, set[str]]]:
    """{class: {"attributes": {...}, "methods": {...}}} from the page's mermaid block."""
    block = re.search(r"```mermaid\n(?:---\n.*?\n---\n)?(classDiagram.*?)```", text, re.S)
    assert block, "no mermaid classDiagram block"
    classes: dict[str, dict[str, set[str]]] = {}
    for name, body in re.findall(r"class (\w+) \{(.*?)\}", block.group(1), re.S):
        members = {"attributes": set(), "methods": set()}
        for line in filter(None, (ln.strip() for ln in body.splitlines())):
            line = line.lstrip("+-#~")
            if "(" in line:
                members["methods"].add(line.split("(")[0])
            else:
                members["attributes"].add(line.split()[-1])
        classes[name] = members
    for a, b in re.findall(r"^\s*(\w+) [*o.]-[-.>]+ (\w+)", block.group(1), re.M):
        assert a in classes and b in classes, f"relation {a} - {b} names an undeclared class"
    return classes


def instances():
    inner = mha.MultiHeadAttention(8, 2)
    return {
        "Attention": mha.Attention(8, 2),
        "MultiHeadAttention": inner,
        "KVCache": mha.KVCache(1, 2, num_kv_heads=1, head_dim=2),
        "RotaryEmbedding": mha.RotaryEmbedding(2),
        "Dispatch": Dispatch("fused", "why"),
        "TorchMultiheadAttention": mha.TorchMultiheadAttention(inner),
    }


def public_methods(cls) -> set[str]:
    """Methods a user calls: defined on the class, public, and not an nn.Module hook."""
    module_hooks = set(dir(torch.nn.Module)) - {"forward"}  # extra_repr and the like
    return {
        name
        for name, value in vars(cls).items()
        if not name.startswith("_")
        and name not in module_hooks
        and (inspect.isfunction(value) or isinstance(value, classmethod))
    }


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_diagram_matches_the_package(page):
    diagram = parse_diagram(page.read_text(encoding="utf-8"))
    objects = instances()
    assert {"Attention", "MultiHeadAttention"} <= set(diagram)
    for name, members in diagram.items():
        assert name in objects and getattr(mha, name, Dispatch) is type(objects[name]), f"{name} is not in mha"
        for member in members["attributes"] | members["methods"]:
            assert hasattr(objects[name], member), f"{name}.{member} is in the diagram but not in the package"
        for member in members["methods"]:
            assert callable(getattr(objects[name], member)), f"{name}.{member} is drawn as a method"
    for cls in (mha.Attention, mha.MultiHeadAttention):
        missing = public_methods(cls) - diagram[cls.__name__]["methods"]
        assert not missing, f"public methods of {cls.__name__} missing from the diagram: {missing}"


def test_the_parser_catches_drift():
    text = "```mermaid\nclassDiagram\n    class Attention {\n        +int heads_count\n        +forward(x) Tensor\n    }\n```"
    diagram = parse_diagram(text)
    assert diagram == {"Attention": {"attributes": {"heads_count"}, "methods": {"forward"}}}
    assert not hasattr(mha.Attention(8, 2), "heads_count")
    assert public_methods(mha.Attention) - diagram["Attention"]["methods"] == {"explain"}
