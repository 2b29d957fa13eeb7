"""The small transformer behind the attention explorer: a look-up task that needs two kinds of head.

The task. The first four digits are a list of four different digits; the last
four are queries, each one of the list's digits. Every position answers with
the digit that follows its own digit in the list, the last one wrapping round
to the first:

    list 3 1 4 5 | queries 4 3 5 1   ->   1 4 5 3 | 5 1 3 4

(3 is followed by 1, 1 by 4, 4 by 5, 5 by 3.) A list position can find its
answer by position alone — it sits one place to the right. A query cannot: its
digit may sit anywhere in the list, so it has to find the matching digit by
content, and then read the digit after it. One attention head computes one
weighted average per position, with one pattern; this task wants two
different patterns, and the model splits them between its heads.

The model is the explorer's: two pre-norm blocks of `mha.MultiHeadAttention`
(2 heads, no mask) and an MLP, on token and learned position embeddings, 32
wide — the same layers and parameter names as docs/_scripts/demo_model.py.
`python docs/_scripts/train_demo.py` trains it; the weights are committed in
`docs/_data/lookup.pt`.

Held-out inputs: an input whose digits hash to 0 (`held_out`) never appears in
training, so the accuracy reported is on inputs the model has not seen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from demo_model import Block
from torch import Tensor, nn

LENGTH, LIST, VOCAB, WIDTH, HEADS, LAYERS = 8, 4, 10, 32, 2, 2
WEIGHTS = Path(__file__).resolve().parents[1] / "_data" / "lookup.pt"
_POWERS = torch.tensor([7**i for i in range(LENGTH)])


def held_out(digits: Tensor) -> Tensor:
    """True for the inputs kept out of training: about one in eleven. Shape: (b, 8) -> (b,)."""
    return (digits * _POWERS).sum(-1) % 11 == 0


def valid(digits: Tensor) -> Tensor:
    """True where the input is a puzzle: four different digits, then four of them. (b, 8) -> (b,)."""
    listed, queries = digits[:, :LIST], digits[:, LIST:]
    distinct = (listed[:, :, None] != listed[:, None, :]).sum((-1, -2)) == LIST * (LIST - 1)
    known = (queries[:, :, None] == listed[:, None, :]).any(-1).all(-1)
    return distinct & known


def answers(digits: Tensor) -> Tensor:
    """The expected output: the digit after each position's digit in the list. (b, 8) -> (b, 8)."""
    listed = digits[:, :LIST]
    where = (digits[:, :, None] == listed[:, None, :]).float().argmax(-1)  # (b, 8): list index of each digit
    return listed.gather(1, (where + 1) % LIST)


def matches(digits: Tensor) -> Tensor:
    """(b, 8) -> (b, 8) list index of each position's digit: where a query's digit sits in the list."""
    return (digits[:, :, None] == digits[:, None, :LIST]).float().argmax(-1)


def batch(size: int, generator: torch.Generator, *, training: bool) -> Tensor:
    """Random puzzles `(size, 8)`: from the training split, or from the held-out one."""
    out = []
    while sum(len(o) for o in out) < size:
        listed = torch.rand(size, VOCAB, generator=generator).argsort(-1)[:, :LIST]
        picks = torch.randint(0, LIST, (size, LENGTH - LIST), generator=generator)
        digits = torch.cat([listed, listed.gather(1, picks)], 1)
        out.append(digits[held_out(digits) != training])
    return torch.cat(out)[:size]


class Lookup(nn.Module):
    """Digits in, digits out; `forward` also returns every layer's attention weights."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Parameter(torch.randn(LENGTH, WIDTH))
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


def load() -> Lookup:
    """The committed, trained model, in eval mode."""
    model = Lookup()
    model.load_state_dict(torch.load(WEIGHTS, weights_only=True))
    return model.eval()


def accuracy(model: Lookup, digits: Tensor, part: slice = slice(None)) -> float:
    """Exact-match accuracy over the positions in `part`: all of them right."""
    with torch.no_grad():
        predicted = model(digits)[0].argmax(-1)
    return (predicted == answers(digits))[:, part].all(-1).float().mean().item()


def ablated(model: Lookup, layer: int, head: int) -> Lookup:
    """A copy of `model` with one head silenced: its columns of `out_proj` set to zero."""
    copy = Lookup()
    copy.load_state_dict(model.state_dict())
    width = WIDTH // HEADS
    with torch.no_grad():
        copy.blocks[layer].attention.out_proj.weight[:, head * width : (head + 1) * width] = 0
    return copy.eval()


def patterns(digits: Tensor) -> dict[str, Tensor]:
    """The ideal weights (b, 8, 8) of each job a head could do, 0 on rows the job does not concern.

    - `previous`: a list position looks one place to the left (the first wraps to the last).
    - `next`: a list position looks one place to the right (the last wraps to the first).
    - `match`: a query looks at the list position holding its own digit.
    - `after match`: a query looks at the list position after its match.
    """
    b = digits.shape[0]
    ideal = {name: torch.zeros(b, LENGTH, LENGTH) for name in ("previous", "next", "match", "after match")}
    rows = torch.arange(LIST)
    ideal["previous"][:, rows, (rows - 1) % LIST] = 1
    ideal["next"][:, rows, (rows + 1) % LIST] = 1
    where = matches(digits)[:, LIST:]  # (b, 4)
    queries = torch.arange(LIST, LENGTH).expand(b, -1)
    for name, column in (("match", where), ("after match", (where + 1) % LIST)):
        ideal[name][torch.arange(b)[:, None], queries, column] = 1
    return ideal


def head_scores(model: Lookup, digits: Tensor) -> dict[tuple[int, int], dict[str, float]]:
    """For every (layer, head): the mean weight it puts where each job's ideal pattern looks."""
    with torch.no_grad():
        _, weights = model(digits)
    ideal = patterns(digits)
    scores = {}
    for layer, w in enumerate(weights):
        for head in range(HEADS):
            scores[layer, head] = {
                name: ((w[:, head] * mask).sum() / mask.sum()).item() for name, mask in ideal.items()
            }
    return scores
