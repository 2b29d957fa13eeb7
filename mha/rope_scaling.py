r"""RoPE scaling: the inverse frequencies of long-context rotary embeddings.

Checkpoints trained at one length and run at a longer one change the
frequencies $\theta_i = \text{base}^{-2i/r}$ of
[`mha.RotaryEmbedding`][mha.RotaryEmbedding] (`r` its rotary width). The
settings use Transformers' `rope_scaling` / `rope_parameters` format, so a
checkpoint's `config.json` entry can be passed as it is:

| `rope_type` | frequencies | used by |
|---|---|---|
| `"linear"` | $\theta_i / \text{factor}$ (position interpolation, Chen et al. 2023) | Llama 2 long fine-tunes |
| `"dynamic"` | NTK-aware: the base grows with the longest sequence seen | Qwen 1, some Llama fine-tunes |
| `"llama3"` | low frequencies divided by `factor`, high kept, smooth between | Llama 3.1, 3.2, 3.3 |
| `"yarn"` | a ramp from original to interpolated frequencies; an attention factor | gpt-oss, Qwen 2.5/3, DeepSeek V3 |

Each is computed with the same floating-point operations, in the same order,
as Transformers' `modeling_rope_utils` (version 5): at position 128k a
float32 angle carries an error of about 0.004 radian, so two formulas that
agree mathematically but round differently would rotate by visibly different
angles. In float64 the same formulas are simply more exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["ROPE_TYPES", "RopeScaling", "parse_scaling"]

ROPE_TYPES = ("default", "linear", "dynamic", "llama3", "yarn")

# Keys each rope_type takes: (required, optional). `rope_theta` and `partial_rotary_factor`
# are accepted by every type (they must agree with `base` and `rotary_dim`).
_KEYS: dict[str, tuple[frozenset[str], frozenset[str]]] = {
    "default": (frozenset(), frozenset()),
    "linear": (frozenset({"factor"}), frozenset()),
    "dynamic": (frozenset({"factor", "original_max_position_embeddings"}), frozenset()),
    "llama3": (
        frozenset({"factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"}),
        frozenset(),
    ),
    "yarn": (
        frozenset({"original_max_position_embeddings"}),
        frozenset(
            {
                "factor",
                "attention_factor",
                "beta_fast",
                "beta_slow",
                "mscale",
                "mscale_all_dim",
                "truncate",
                "max_position_embeddings",
            }
        ),
    ),
}
_COMMON = frozenset({"rope_type", "type", "rope_theta", "partial_rotary_factor"})


@dataclass(frozen=True)
class RopeScaling:
    """Validated scaling settings: the `rope_type` and its parameters (numbers as floats)."""

    rope_type: str
    params: dict[str, float | bool | None] = field(default_factory=dict)

    @property
    def original_length(self) -> int:
        """`original_max_position_embeddings`: the length the checkpoint was trained at."""
        return int(self.params["original_max_position_embeddings"])  # type: ignore[arg-type]

    def attention_factor(self) -> float:
        """What cos and sin are multiplied by: 1, except for yarn (`0.1 ln(factor) + 1` by default)."""
        if self.rope_type != "yarn":
            return 1.0
        given = self.params.get("attention_factor")
        if given is not None:
            return float(given)
        factor, mscale, mscale_all_dim = (self.params.get(k) for k in ("factor", "mscale", "mscale_all_dim"))
        if mscale and mscale_all_dim:
            return float(_yarn_mscale(factor, mscale) / _yarn_mscale(factor, mscale_all_dim))  # type: ignore[arg-type]
        return _yarn_mscale(factor)  # type: ignore[arg-type]

    def inverse_frequencies(
        self, base: float, dim: int, dtype: torch.dtype, device: torch.device, *, seq_len: int | None = None
    ) -> Tensor:
        """The `dim / 2` inverse frequencies, computed in `dtype`.

        `seq_len` is the length the `dynamic` type scales for (the longest
        sequence seen); the other types ignore it.
        """
        exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).to(dtype) / dim
        if self.rope_type == "default":
            return 1.0 / (base**exponents)
        factor = float(self.params["factor"])  # type: ignore[arg-type]
        if self.rope_type == "linear":
            return 1.0 / (base**exponents) / factor
        if self.rope_type == "dynamic":
            return self._dynamic(base, dim, exponents, seq_len)
        if self.rope_type == "llama3":
            return self._llama3(1.0 / (base**exponents), factor)
        return self._yarn(base, dim, exponents)

    def _dynamic(self, base: float, dim: int, exponents: Tensor, seq_len: int | None) -> Tensor:
        original = self.original_length
        if seq_len is None or seq_len <= original:
            return 1.0 / (base**exponents)  # the base is unchanged up to the trained length
        # Transformers computes the grown base from a tensor length, so in the angles' dtype.
        length = torch.tensor(seq_len, dtype=torch.int64, device=exponents.device).to(exponents.dtype)
        factor = float(self.params["factor"])  # type: ignore[arg-type]
        grown = base * ((factor * length / original) - (factor - 1)) ** (dim / (dim - 2))
        return 1.0 / (grown**exponents)

    def _llama3(self, inverse: Tensor, factor: float) -> Tensor:
        p = self.params
        low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])  # type: ignore[arg-type]
        original = self.original_length
        wavelength = 2 * math.pi / inverse
        # Long wavelengths (low frequencies) are divided by factor, short ones kept.
        scaled = torch.where(wavelength > original / low, inverse / factor, inverse)
        smooth = (original / wavelength - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        between = ~(wavelength < original / high) * ~(wavelength > original / low)
        return torch.where(between, smoothed, scaled)

    def _yarn(self, base: float, dim: int, exponents: Tensor) -> Tensor:
        p = self.params
        factor = float(p["factor"])  # type: ignore[arg-type]
        fast = float(p.get("beta_fast") or 32)
        slow = float(p.get("beta_slow") or 1)
        truncate = p.get("truncate")
        low, high = _yarn_range(fast, slow, dim, base, self.original_length, truncate=truncate is not False)
        if low == high:
            high += 0.001  # a ramp of zero width would divide by zero
        wavelengths = base**exponents  # 1 / theta_i
        index = torch.arange(dim // 2, dtype=exponents.dtype, device=exponents.device)
        ramp = ((index - low) / (high - low)).clamp(0, 1)
        keep = 1 - ramp  # 1: the original frequency, 0: the interpolated one
        return (1.0 / (factor * wavelengths)) * (1 - keep) + (1.0 / wavelengths) * keep


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_range(
    fast: float, slow: float, dim: int, base: float, original: int, *, truncate: bool
) -> tuple[float, float]:
    """The feature indices between which yarn's ramp goes from original to interpolated frequencies."""

    def dimension(rotations: float) -> float:  # the pair index whose wavelength fits `rotations` times
        return (dim * math.log(original / (rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = dimension(fast), dimension(slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def _positive(rope_type: str, key: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"scaling[{key!r}] for rope_type {rope_type!r} must be a positive number, got {value!r}")
    return float(value)


def parse_scaling(scaling: object, *, base: float, head_dim: int, rotary_dim: int) -> RopeScaling | None:
    """Check a `rope_scaling` dict and return it validated, or `None` for no scaling.

    Raises:
        TypeError: `scaling` is not a dict.
        ValueError: an unknown `rope_type`, a missing or unknown key, a value
            out of range, or `rope_theta` / `partial_rotary_factor` that
            disagree with `base` / `rotary_dim`.
    """
    if scaling is None:
        return None
    if not isinstance(scaling, dict):
        raise TypeError(
            f"scaling must be a dict in Transformers' rope_scaling format or None, got {type(scaling).__name__}"
        )
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type not in ROPE_TYPES:
        raise ValueError(
            f"scaling['rope_type'] must be one of {', '.join(map(repr, ROPE_TYPES))}, got {rope_type!r}"
            + (" (not supported by mha)" if isinstance(rope_type, str) else "")
        )
    required, optional = _KEYS[rope_type]
    keys = set(scaling)
    missing, unknown = required - keys, keys - required - optional - _COMMON
    if missing:
        raise ValueError(f"scaling for rope_type {rope_type!r} needs {sorted(missing)}, got keys {sorted(keys)}")
    if unknown:
        raise ValueError(
            f"scaling for rope_type {rope_type!r} has unknown keys {sorted(unknown)}; "
            f"it takes {sorted(required | optional | _COMMON)}"
        )
    _check_agrees(scaling, base=base, head_dim=head_dim, rotary_dim=rotary_dim)
    params: dict[str, float | bool | None] = {}
    for key in (required | optional) - {"truncate"}:
        value = scaling.get(key)
        if value is not None or key in required:
            params[key] = _positive(rope_type, key, value)
    if "truncate" in scaling:
        if not isinstance(scaling["truncate"], bool):
            raise ValueError(f"scaling['truncate'] must be a bool, got {scaling['truncate']!r}")
        params["truncate"] = scaling["truncate"]
    _check_ranges(rope_type, params)
    return RopeScaling(rope_type, params)


def _check_agrees(scaling: dict, *, base: float, head_dim: int, rotary_dim: int) -> None:
    theta = scaling.get("rope_theta")
    if theta is not None and theta != base:
        raise ValueError(f"scaling['rope_theta'] = {theta!r} disagrees with base = {base!r}")
    fraction = scaling.get("partial_rotary_factor")
    if fraction is not None and int(head_dim * fraction) != rotary_dim:
        raise ValueError(
            f"scaling['partial_rotary_factor'] = {fraction!r} means rotary_dim = {int(head_dim * fraction)}, "
            f"but rotary_dim = {rotary_dim}"
        )


def _check_ranges(rope_type: str, params: dict[str, float | bool | None]) -> None:
    if rope_type == "llama3" and not params["high_freq_factor"] > params["low_freq_factor"]:  # type: ignore[operator]
        raise ValueError(
            f"scaling['high_freq_factor'] must be greater than scaling['low_freq_factor'], got "
            f"{params['high_freq_factor']} and {params['low_freq_factor']}"
        )
    if rope_type == "yarn":
        if params.get("factor") is None:
            if params.get("max_position_embeddings") is None:
                raise ValueError(
                    "scaling for rope_type 'yarn' needs 'factor', or 'max_position_embeddings' to derive it as "
                    "max_position_embeddings / original_max_position_embeddings (as Transformers does)"
                )
            params["factor"] = params["max_position_embeddings"] / params["original_max_position_embeddings"]  # type: ignore[operator]
        fast, slow = params.get("beta_fast") or 32, params.get("beta_slow") or 1
        if not fast > slow:
            raise ValueError(f"scaling['beta_fast'] must be greater than scaling['beta_slow'], got {fast} and {slow}")
