"""Argument checks for the public entry points.

Every check raises `ValueError` (wrong value) or `TypeError` (wrong type)
with a message that names the argument, what was received and what was
expected, so that a user never has to decode an error from inside torch.

The checks run once, where a call enters the package; the internals trust
their callers. A message is formatted only when it is raised: an f-string
on the success path costs time on every call and, under `torch.compile`,
reads tensor sizes and so pins them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor


def _number(name: str, value: object, kind: str) -> None:
    # bool is an int subclass: True would pass as 1 everywhere below.
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind == "float" else int):
        article = "a float" if kind == "float" else "an int"
        raise TypeError(f"{name} must be {article}, got {type(value).__name__} ({value!r})")


def positive_int(name: str, value: object) -> int:
    """Return `value` if it is a positive `int`, else raise."""
    _number(name, value, "int")
    if value <= 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value  # type: ignore[return-value]


def nonnegative_int(name: str, value: object) -> int:
    """Return `value` if it is an `int` >= 0 (a `SymInt` under tracing passes), else raise."""
    if isinstance(value, torch.SymInt):
        return value  # type: ignore[return-value]
    _number(name, value, "int")
    if value < 0:  # type: ignore[operator]
        raise ValueError(f"{name} must be an int >= 0, got {value}")
    return value  # type: ignore[return-value]


def finite_number(name: str, value: object) -> float:
    """Return `value` as a float if it is a finite int or float, else raise."""
    _number(name, value, "float")
    if not math.isfinite(value):  # type: ignore[arg-type]
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def positive_number(name: str, value: object) -> float:
    """Return `value` as a float if it is a finite int or float > 0, else raise."""
    value = finite_number(name, value)
    if value <= 0:
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    return value


def optional_positive_int(name: str, value: object) -> int | None:
    """Return `value` if it is `None` or a positive `int`, else raise."""
    return None if value is None else positive_int(name, value)


def probability(name: str, value: object) -> float:
    """Return `value` if it is a float in [0, 1), else raise."""
    _number(name, value, "float")
    if not 0.0 <= value < 1.0:  # type: ignore[operator]
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)  # type: ignore[arg-type]


def flag(name: str, value: object) -> bool:
    """Return `value` if it is a bool; `"False"` or `0` would otherwise pass as a flag."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def divisible(name: str, value: int, by_name: str, by: int) -> None:
    """Raise unless `value` is a multiple of `by`."""
    if value % by != 0:
        raise ValueError(f"{name}={value} must be divisible by {by_name}={by} (remainder {value % by})")


def tensor(name: str, value: object) -> Tensor:
    """Return `value` if it is a Tensor, else raise `TypeError`."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def not_nested(name: str, value: object) -> None:
    """Raise `TypeError` if `value` is a nested (jagged) tensor.

    Causal masks, weights and rotary positions otherwise fail deep inside
    torch on a jagged dimension; only the drop-in `TorchMultiheadAttention`
    passes them on, as `nn.MultiheadAttention` does, for what works.
    """
    if isinstance(value, Tensor) and value.is_nested:
        raise TypeError(
            f"{name} is a nested (jagged) tensor, which mha does not take: pad the sequences and pass "
            "mask=mha.masks.padding_mask(lengths), or pack them into one sequence with document_ids"
        )


def sizes(value: Tensor | Sequence[int]) -> str:
    """A tensor's shape (or a sequence of sizes) as text, `(2, 3)`, for a message.

    Under `torch.compile` a size may be symbolic: Dynamo writes a tuple of them
    by their symbols, `(s37, s25)`, but one at a time, through `int`, by their
    values. Called only to raise, so the values it reads pin nothing.
    """
    dims = [f"{int(d)}" for d in (value.shape if isinstance(value, Tensor) else value)]
    return "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"


def number(value: int) -> str:
    """An int for a message, `int(value)`: under `torch.compile` an int attribute that
    changed between calls becomes symbolic, and Dynamo cannot format it as it is."""
    return f"{int(value)}"


def fits(shape: Sequence[int], expected: Sequence[int | None]) -> bool:
    """Whether `shape` has `expected`'s rank and sizes (`None` accepts any size)."""
    return len(shape) == len(expected) and all(e is None or s == e for s, e in zip(shape, expected, strict=True))


def shape(name: str, value: object, expected: Sequence[int | None], legend: Callable[[], str]) -> Tensor:
    """Check that `value` is a Tensor of the expected shape.

    Args:
        name: the argument's name, for the message.
        value: the tensor to check.
        expected: one entry per dimension; `None` accepts any size.
        legend: makes the expected shape in the package's vocabulary, e.g.
            `"(b, s_q, h=64)"`; called only to raise.
    """
    value = tensor(name, value)
    if not fits(value.shape, expected):
        raise ValueError(f"{name} must have shape {legend()}, got {sizes(value)}")
    return value


def floating(name: str, value: Tensor) -> Tensor:
    """Raise `TypeError` unless `value` has a floating-point dtype."""
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


def floating_dtype(name: str, value: object) -> torch.dtype | None:
    """Raise `TypeError` unless `value` is `None` or a floating-point `torch.dtype`."""
    if value is not None and not (isinstance(value, torch.dtype) and value.is_floating_point):
        raise TypeError(f"{name} must be a floating-point torch.dtype or None, got {value!r}")
    return value


def same_dtype(name: str, value: Tensor, like_name: str, like: Tensor) -> None:
    """Raise `TypeError` unless `value` has `like`'s dtype."""
    if value.dtype != like.dtype:
        raise TypeError(f"{name} must have the dtype of {like_name} ({like.dtype}), got {value.dtype}")


def same_device(name: str, value: Tensor, like_name: str, device: torch.device) -> None:
    """Raise `ValueError` unless `value` lives on `device`."""
    if value.device != device:
        raise ValueError(f"{name} must be on the device of {like_name} ({device}), got {value.device}")


def mask(name: str, value: object, target: Sequence[int], legend: str) -> Tensor:
    """Check an attention mask: bool or float, broadcastable to `target`.

    Broadcasting follows torch's rules: dimensions are matched from the right,
    and each one must equal the target's or be 1.
    """
    value = tensor(name, value)
    if value.dtype != torch.bool and not value.is_floating_point():
        raise TypeError(
            f"{name} must be a bool tensor (True = may attend) or a float tensor "
            f"(added to the scores), got dtype {value.dtype}"
        )
    got = value.shape
    # Matched from the right; equal lengths, as Dynamo in torch 2.5 refuses zip() over unequal ones.
    if len(got) > len(target) or not all(
        g == 1 or g == t for g, t in zip(got, target[len(target) - len(got) :], strict=True)
    ):
        raise ValueError(f"{name} must be broadcastable to {legend} = {sizes(target)}, got shape {sizes(value)}")
    return value


def one_of(name: str, value: object, allowed: Sequence[str]) -> str:
    """Raise `ValueError` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value  # type: ignore[return-value]
