"""MkDocs hook: the full class diagram, generated from the package at every build.

The class-diagram pages hold the marker `<!-- mha:class-diagram -->`; this
hook replaces it with a mermaid `classDiagram` read off the classes
themselves, so the picture cannot drift from the code:

* attributes: what an instance holds (plain attributes, parameters,
  submodules, properties, dataclass fields), with the type of the value it holds;
* methods: public methods and class methods (`$`) defined on the class, with
  their parameter names and return annotation;
* relations: `*--` where a class holds another diagrammed class it always
  builds, `o--` where it holds one only when given (`positional=`), and `..>`
  where a method takes or returns one.

tests/site/test_class_diagram.py checks the result against the package.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap

import torch

import mha
from mha.functional import Dispatch

MARKER = "<!-- mha:class-diagram -->"
MAX_PARAMS = 3

# The relation lines and markers (diamonds, arrowheads) in Material's edge
# colour, in both palettes: Material's own rules name marker classes that
# mermaid 11 no longer writes, which left some of them mermaid's dark grey
# (#333) on the dark background, at 1.3 : 1.
# The CSS custom properties reach into the diagram's shadow root.
MARKER_CSS = (
    "path.relation, marker.classDiagram path { stroke: var(--md-mermaid-edge-color) !important; } "
    "marker.composition path, marker.dependency path, marker.extension path "
    "{ fill: var(--md-mermaid-edge-color) !important; } "
    "marker.aggregation path { fill: var(--md-default-bg-color) !important; } "
    # The boxes, their text and the edge labels in the page's palette too: mermaid's
    # default theme keeps lavender boxes and white label cards on the dark page.
    'g.node path[fill]:not([fill="none"]) { fill: var(--md-mermaid-node-bg-color) !important; } '
    'g.node path[stroke]:not([stroke="none"]) { stroke: var(--md-mermaid-node-fg-color) !important; } '
    "g.node .nodeLabel, g.node span, g.node p { color: var(--md-default-fg-color) !important; } "
    "g.node text { fill: var(--md-default-fg-color) !important; } "
    ".edgeLabel, .edgeLabel p, .labelBkg { background-color: var(--md-default-bg-color) !important; "
    "color: var(--md-default-fg-color) !important; } "
    ".edgeLabel rect { fill: var(--md-default-bg-color) !important; }"
)

THEME_FRONT_MATTER = f"""---
config:
  themeCSS: '{MARKER_CSS}'
---"""

FRONT_MATTER = f"""---
# Natural size: docs/assets/javascripts/diagrams.js fits it to the column or
# lets the reader pan it. Mermaid 11's class diagrams read this flag from the
# `state` section.
config:
  themeCSS: '{MARKER_CSS}'
  class:
    useMaxWidth: false
  state:
    useMaxWidth: false
---"""


def samples() -> dict[type, object]:
    """One instance of each diagrammed class, with every optional part present."""
    inner = mha.MultiHeadAttention(8, 2, positional=mha.RotaryEmbedding(4))
    return {
        mha.MultiHeadAttention: inner,
        mha.Attention: inner.attention,
        mha.KVCache: inner.new_cache(1, 2),
        mha.RotaryEmbedding: inner.attention.positional,
        Dispatch: inner.explain(),
        mha.TorchMultiheadAttention: mha.TorchMultiheadAttention(8, 2, add_bias_kv=True),
    }


_MODULE_API = set(dir(torch.nn.Module))


def public_methods(cls: type) -> dict[str, object]:
    """Methods a user calls: defined on the class, public, not an nn.Module hook (forward is kept)."""
    return {
        name: value
        for name, value in vars(cls).items()
        if not name.startswith("_")
        and (name == "forward" or name not in _MODULE_API)
        and (inspect.isfunction(value) or isinstance(value, classmethod))
    }


def attributes(obj: object) -> dict[str, object]:
    """name -> value of what an instance holds, in definition order."""
    cls = type(obj)
    names: list[str] = []
    if dataclasses.is_dataclass(obj):
        names += [f.name for f in dataclasses.fields(obj)]
    names += [n for n in vars(obj) if not n.startswith("_") and n != "training"]
    if isinstance(obj, torch.nn.Module):
        names += list(obj._parameters) + list(obj._modules)  # parameters it holds itself (the drop-in's)
    for klass in reversed(cls.__mro__):
        if klass.__module__.startswith("mha"):
            names += [
                n
                for n, v in vars(klass).items()
                if not n.startswith("_")
                and (isinstance(v, property) or not callable(v))
                and not isinstance(v, (classmethod, staticmethod))
            ]
    return {n: getattr(obj, n) for n in dict.fromkeys(names)}


def declared_types(cls: type) -> dict[str, str]:
    """name -> annotation, as written in the code: class-level fields, `self.x: T = ...`
    in any method, property return types, `__init__` parameters. Across the mha bases."""
    types: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not klass.__module__.startswith("mha"):
            continue
        types.update({k: str(v) for k, v in getattr(klass.__init__, "__annotations__", {}).items()})
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        for node in ast.walk(tree):
            if isinstance(node, ast.AnnAssign):
                target = node.target
                on_self = isinstance(target, ast.Attribute) and getattr(target.value, "id", None) == "self"
                if on_self and isinstance(target, ast.Attribute):
                    types[target.attr] = ast.unparse(node.annotation)
                elif isinstance(target, ast.Name):
                    types[target.id] = ast.unparse(node.annotation)
        for name, value in vars(klass).items():
            if isinstance(value, property) and value.fget and "return" in value.fget.__annotations__:
                types[name] = str(value.fget.__annotations__["return"])
    return types


def _type_name(annotation: str) -> str:
    """'Tensor | tuple[Tensor, Tensor]' -> 'Tensor or tuple', 'nn.RMSNorm | None' -> 'RMSNorm':
    mermaid reads no brackets or bars, and the diagram names classes without their module."""
    annotation = re.sub(r"\b[a-z_][\w]*\.", "", annotation)
    return re.sub(r"\[.*\]", "", annotation).replace(" | None", "").replace(" | ", " or ")


def _method_line(name: str, value: object) -> str:
    function = value.__func__ if isinstance(value, classmethod) else value
    params = [p for p in inspect.signature(function).parameters if p not in ("self", "cls")]
    if len(params) > MAX_PARAMS:  # keep boxes narrow: the API reference has the full signature
        params = params[:MAX_PARAMS] + ["…"]
    returns = function.__annotations__.get("return", "")
    suffix = "$" if isinstance(value, classmethod) else ""
    return f"+{name}({', '.join(params)}){suffix} {_type_name(str(returns))}".rstrip()


def _relations(cls: type, obj: object, names: dict[type, str]) -> list[str]:
    lines = []
    optional = {p.name for p in inspect.signature(cls.__init__).parameters.values() if p.default is None}
    for attr, value in attributes(obj).items():
        other = type(value)
        if other in names and other is not cls:
            arrow = "o--" if attr in optional else "*--"
            lines.append(f"{names[cls]} {arrow} {names[other]} : {attr}")
    held = {type(v) for v in attributes(obj).values()}
    used: dict[type, str] = {}
    for returns in (True, False):  # name a relation after the method that returns it, if any
        for method, value in public_methods(cls).items():
            function = value.__func__ if isinstance(value, classmethod) else value
            annotations = {k: v for k, v in function.__annotations__.items() if (k == "return") == returns}
            for annotation in annotations.values():
                for other, other_name in names.items():
                    if other is not cls and other not in held and re.search(rf"\b{other_name}\b", str(annotation)):
                        used.setdefault(other, method)
    lines += [f"{names[cls]} ..> {names[other]} : {method}()" for other, method in used.items()]
    return lines


def generate() -> str:
    """The mermaid source of the full class diagram."""
    objects = samples()
    names = {cls: cls.__name__ for cls in objects}
    lines = [FRONT_MATTER, "classDiagram", "    direction TB"]
    relations: list[str] = []
    for cls, obj in objects.items():
        lines.append(f"    class {cls.__name__} {{")
        declared = declared_types(cls)
        for attr, value in attributes(obj).items():
            if value is None and attr in getattr(obj, "_parameters", {}):
                kind = "Parameter"  # a parameter this configuration lacks, as on nn.MultiheadAttention
            else:
                # An attribute that holds None in the sample still has a type: the one the code declares.
                kind = type(value).__name__ if value is not None else _type_name(declared.get(attr, "object"))
            lines.append(f"        +{kind} {attr}")
        for method, value in public_methods(cls).items():
            lines.append(f"        {_method_line(method, value)}")
        lines.append("    }")
        relations += _relations(cls, obj, names)
    lines += [f"    {r}" for r in relations]
    return "\n".join(lines) + "\n"


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (MkDocs hook signature)
    # A hand-written class diagram (the tutorial's) gets the same palette.
    markdown = markdown.replace("```mermaid\nclassDiagram\n", f"```mermaid\n{THEME_FRONT_MATTER}\nclassDiagram\n")
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, f"```mermaid\n{generate()}```")
