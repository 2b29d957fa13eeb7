"""The small transformer behind the attention-weights guide and the explorer.

The task: reverse a sequence of 8 digits (`3 1 4 1 5 9 2 6` -> `6 2 9 5 1 4 1 3`).
Output position `i` must read input position `7 - i`, so a head that solves it
attends along the anti-diagonal — a pattern a reader can see.

The model is two pre-norm blocks of `mha.MultiHeadAttention` (2 heads, no
mask: every position sees every other) and an MLP, on token and learned
position embeddings, 32 wide. `python docs/_scripts/train_demo.py` trains it;
the weights are committed in `docs/_data/reverse.pt`.

Held-out sequences: a sequence whose digits hash to 0 (`held_out`) never
appears in training, so the reported accuracy is on sequences the model has
not seen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from mha import MultiHeadAttention

LENGTH, VOCAB, WIDTH, HEADS, LAYERS = 8, 10, 32, 2, 2
WEIGHTS = Path(__file__).resolve().parents[1] / "_data" / "reverse.pt"
_POWERS = torch.tensor([7**i for i in range(LENGTH)])


def held_out(digits: Tensor) -> Tensor:
    """True for the sequences kept out of training: about one in eleven. Shape: (b, 8) -> (b,)."""
    return (digits * _POWERS).sum(-1) % 11 == 0


def batch(size: int, generator: torch.Generator, *, training: bool) -> Tensor:
    """Random digit sequences `(size, 8)`: from the training split, or from the held-out one."""
    out = []
    while sum(len(o) for o in out) < size:
        digits = torch.randint(0, VOCAB, (size, LENGTH), generator=generator)
        keep = held_out(digits) != training
        out.append(digits[keep])
    return torch.cat(out)[:size]


class Block(nn.Module):
    def __init__(self, heads: int = HEADS) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(WIDTH), nn.LayerNorm(WIDTH)
        self.attention = MultiHeadAttention(WIDTH, heads)
        self.mlp = nn.Sequential(nn.Linear(WIDTH, 4 * WIDTH), nn.ReLU(), nn.Linear(4 * WIDTH, WIDTH))

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        context, weights = self.attention(self.norm1(x), need_weights=True)  # weights: (b, n_h, s, s)
        x = x + context
        return x + self.mlp(self.norm2(x)), weights


class Reverser(nn.Module):
    """Digits in, digits out; `forward` also returns every layer's attention weights."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Parameter(torch.zeros(LENGTH, WIDTH))
        self.blocks = nn.ModuleList(Block() for _ in range(LAYERS))
        self.norm = nn.LayerNorm(WIDTH)
        self.readout = nn.Linear(WIDTH, VOCAB)

    def forward(self, digits: Tensor) -> tuple[Tensor, list[Tensor]]:
        """(b, 8) digits -> logits (b, 8, 10), and weights (b, n_h, 8, 8) per layer."""
        x = self.tokens(digits) + self.positions
        weights = []
        for block in self.blocks:
            x, w = block(x)
            weights.append(w)
        return self.readout(self.norm(x)), weights


def load() -> Reverser:
    """The committed, trained model, in eval mode."""
    model = Reverser()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return model.eval()


def accuracy(model: Reverser, digits: Tensor) -> float:
    """Exact-match accuracy: the whole sequence reversed correctly."""
    with torch.no_grad():
        predicted = model(digits)[0].argmax(-1)
    return (predicted == digits.flip(-1)).all(-1).float().mean().item()
