"""mha: multi-head attention for PyTorch.

Exact against `torch.nn.MultiheadAttention`, fused where PyTorch's
kernels allow, and never NaN where a query may attend to nothing.

Shape vocabulary, used in every docstring, comment and error message:

| letter | meaning |
|--------|---------|
| `b` | batch size |
| `s_q` | query length |
| `s_kv` | key/value length |
| `h` | hidden size (`hidden_size`), the model width |
| `n_h` | query heads (`num_heads`) |
| `n_kv` | key/value heads (`num_kv_heads`): `n_h` for MHA, fewer for grouped-query, 1 for multi-query attention |
| `d` | head dimension, `h / n_h` |

Boolean masks are True where a query **may attend** to a key.
"""

from mha import functional, masks
from mha.attention import Attention, MultiHeadAttention
from mha.cache import KVCache
from mha.convert_hf import from_hf, to_hf
from mha.functional import Dispatch
from mha.interop import TorchMultiheadAttention, from_torch, replace_torch_attention, to_torch
from mha.rotary import RotaryEmbedding

__all__ = [
    "Attention",
    "MultiHeadAttention",
    "KVCache",
    "RotaryEmbedding",
    "Dispatch",
    "TorchMultiheadAttention",
    "from_torch",
    "to_torch",
    "replace_torch_attention",
    "from_hf",
    "to_hf",
    "functional",
    "masks",
]

__version__ = "0.1.0"
