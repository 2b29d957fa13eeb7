"""Argument checks shared by the modules.

Every check raises `ValueError` (wrong value) or `TypeError` (wrong type)
with a message that names the argument, what was received and what was
expected, so that a user never has to decode a shape error from inside torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def positive_int(name: str, value: object) -> int:
    """Return `value` if it is a positive `int`, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} ({value!r})")
    if value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value}")
    return value


def flag(name: str, value: object) -> bool:
    """Return `value` if it is a bool; `"False"` or `0` would otherwise pass as a flag."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} ({value!r})")
    return value


def finite_number(name: str, value: object) -> float:
    """Return `value` as a float if it is a finite int or float (not a bool), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} ({value!r})")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def divisible(name: str, value: int, by_name: str, by: int) -> None:
    """Raise unless `value` is a multiple of `by`."""
    if value % by != 0:
        raise ValueError(
            f"{name}={value} must be divisible by {by_name}={by} (remainder {value % by})"
        )


def probability(name: str, value: object) -> float:
    """Return `value` if it is a float in [0, 1), else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__} ({value!r})")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def tensor(name: str, value: object) -> Tensor:
    """Return `value` if it is a Tensor, else raise `TypeError`."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def shape(name: str, value: object, expected: Sequence[int | None], legend: str) -> Tensor:
    """Check that `value` is a Tensor of the expected shape.

    Args:
        name: the argument's name, for the message.
        value: the tensor to check.
        expected: one entry per dimension; `None` accepts any size.
        legend: the expected shape in the package's vocabulary, e.g.
            `"(b, s_q, h=64)"`.
    """
    value = tensor(name, value)
    got = tuple(value.shape)
    ok = len(got) == len(expected) and all(e is None or g == e for g, e in zip(got, expected))
    if not ok:
        raise ValueError(f"{name} must have shape {legend}, got {got}")
    return value


def floating(name: str, value: Tensor) -> Tensor:
    """Raise `TypeError` unless `value` has a floating-point dtype."""
    if not value.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
    return value


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
    got = tuple(value.shape)
    fits = len(got) <= len(target) and all(
        g in (1, t) for g, t in zip(reversed(got), reversed(target))
    )
    if not fits:
        raise ValueError(
            f"{name} must be broadcastable to {legend} = {tuple(target)}, got shape {got}"
        )
    return value


def one_of(name: str, value: object, allowed: Sequence[str]) -> str:
    """Raise `ValueError` unless `value` is one of `allowed`."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")
    return value  # type: ignore[return-value]
