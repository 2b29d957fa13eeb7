r"""q/k-norm: RMSNorm over each head's queries or keys, in fewer passes than `nn.RMSNorm`'s CPU kernel.

$\hat x = x \cdot w / \sqrt{\overline{x^2} + \epsilon}$ over the head width `d`
(Qwen 3, Gemma 3). `torch.nn.functional.rms_norm` on CPU runs it as a chain of
element-wise ops, each a pass over `x` and most a new tensor of its size; here
the mean square is one reduction (`vector_norm`, accumulated in float32 or
wider), and the result one product, scaled in place by `w` when no gradient
needs the product. Measured at b=1, s=4096, 16 heads of 128 (float32, 2-core
CPU, loaded): 105-130 ms against 680-980 ms for `rms_norm`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__: list[str] = []  # internal: used by mha.attention


def head_norm(norm: nn.Module, x: Tensor) -> Tensor:
    """`norm(x)` for a `torch.nn.RMSNorm(d)` with a weight; any other module is simply called.

    Shape:
        x: `(..., d)`; output like `x`.
    """
    weight = getattr(norm, "weight", None)
    if type(norm) is not nn.RMSNorm or weight is None or x.shape[-1] != weight.shape[0]:
        return norm(x)
    eps = norm.eps if norm.eps is not None else torch.finfo(x.dtype).eps
    work = torch.promote_types(x.dtype, torch.float32)
    # rsqrt(Σx² / d + eps), on (..., 1): small tensors (out of place: autograd keeps the norm).
    inverse = torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True, dtype=work).square() / x.shape[-1] + eps)
    out = x * inverse  # a fresh tensor, in the working dtype
    # In place only where autograd need not keep the product for the weight's gradient.
    out = out * weight if torch.is_grad_enabled() and (out.requires_grad or weight.requires_grad) else out.mul_(weight)
    return out if out.dtype == x.dtype else out.to(x.dtype)
