"""The small transformer behind the attention explorer: two questions, two heads.

The task. Eight digits: four different digits, each written twice, in any
order. Every position answers two questions:

- *before*: which digit stands just before me? (Position 0 looks round to
  position 7.)
- *twin*: where is my twin, the other copy of my digit?

    3 1 4 1 5 3 4 5   ->   before 5 3 1 4 1 5 3 4,  twin 5 3 6 1 7 0 2 4

The first question is answered by position alone: always one place to the
left. The second by content: the twin can be anywhere, and only comparing
digits finds it. One attention head gives each position one weighted average,
one pattern of where to look; these are two patterns at once, and the model's
two heads take one each. `head_scores` measures where each head looks,
`ablated` silences one, and `accuracy` counts each question apart: with
the committed weights, silencing one head loses one question and keeps the
other, and the same model given a single head (`one_head`, trained the same
way) learns only one of the two questions (tests/site/test_explorer.py checks it).

The model: token and learned position embeddings, one pre-norm block of
`mha.MultiHeadAttention(32, 2)` (no mask) and an MLP, then one linear
read-out giving 10 scores for *before* and 8 for *twin* — the same layers
and parameter names as docs/_scripts/demo_model.py. `python
docs/_scripts/train_demo.py lookup` trains it; the weights are committed in
`docs/_data/lookup.pt`.

Held-out inputs: an input whose digits hash to 0 (`held_out`) never appears in
training, so the accuracy reported is on inputs the model has not seen.
"""

from __future__ import annotations

from pathlib import Path

import torch
from demo_model import Block
from torch import Tensor, nn

LENGTH, DISTINCT, VOCAB, WIDTH, HEADS, LAYERS = 8, 4, 10, 32, 2, 1
QUESTIONS = {"before": VOCAB, "twin": LENGTH}  # question -> number of possible answers (read-out scores)
WEIGHTS = Path(__file__).resolve().parents[1] / "_data" / "lookup.pt"
# The control: the same model with a single head, trained the same way.
ONE_HEAD_WEIGHTS = WEIGHTS.with_name("lookup-one-head.pt")
_POWERS = torch.tensor([7**i for i in range(LENGTH)])


def held_out(digits: Tensor) -> Tensor:
    """True for the inputs kept out of training: about one in eleven. Shape: (b, 8) -> (b,)."""
    return (digits * _POWERS).sum(-1) % 11 == 0


def valid(digits: Tensor) -> Tensor:
    """True where the input is a puzzle: every digit in it appears exactly twice. (b, 8) -> (b,)."""
    return ((digits[:, :, None] == digits[:, None, :]).sum(-1) == 2).all(-1)


def answers(digits: Tensor) -> dict[str, Tensor]:
    """The expected answers, per question: the digit before each position, its twin's position. (b, 8) -> (b, 8)."""
    same = (digits[:, :, None] == digits[:, None, :]) & ~torch.eye(LENGTH, dtype=torch.bool)
    return {"before": digits.roll(1, -1), "twin": same.int().argmax(-1)}


def batch(size: int, generator: torch.Generator, *, training: bool) -> Tensor:
    """Random puzzles `(size, 8)`: from the training split, or from the held-out one."""
    out = []
    while sum(len(o) for o in out) < size:
        pairs = torch.rand(size, VOCAB, generator=generator).argsort(-1)[:, :DISTINCT].repeat(1, 2)
        digits = pairs.gather(1, torch.rand(size, LENGTH, generator=generator).argsort(-1))
        out.append(digits[held_out(digits) != training])
    return torch.cat(out)[:size]


class Lookup(nn.Module):
    """Digits in, scores for both questions out; `forward` also returns every layer's attention weights."""

    def __init__(self, heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.tokens = nn.Embedding(VOCAB, WIDTH)
        self.positions = nn.Parameter(torch.randn(LENGTH, WIDTH))
        self.blocks = nn.ModuleList(Block(heads) for _ in range(LAYERS))
        self.norm = nn.LayerNorm(WIDTH)
        self.readout = nn.Linear(WIDTH, sum(QUESTIONS.values()))

    def forward(self, digits: Tensor) -> tuple[dict[str, Tensor], list[Tensor]]:
        """(b, 8) digits -> scores per question (b, 8, 10) and (b, 8, 8), and weights (b, n_h, 8, 8) per layer."""
        x = self.tokens(digits) + self.positions
        weights = []
        for block in self.blocks:
            x, w = block(x)
            weights.append(w)
        scores = self.readout(self.norm(x)).split(list(QUESTIONS.values()), -1)
        return dict(zip(QUESTIONS, scores, strict=True)), weights


def one_head() -> Lookup:
    """The same model with a single head: the control experiment."""
    return Lookup(heads=1)


def load(heads: int = HEADS) -> Lookup:
    """The committed, trained model (or, with `heads=1`, the one-head control), in eval mode."""
    model = Lookup(heads)
    model.load_state_dict(torch.load(WEIGHTS if heads == HEADS else ONE_HEAD_WEIGHTS, weights_only=True))
    return model.eval()


def loss(model: Lookup, digits: Tensor) -> Tensor:
    """Cross-entropy of both questions, summed: what training lowers."""
    scores, _ = model(digits)
    expected = answers(digits)
    return sum(nn.functional.cross_entropy(scores[q].flatten(0, 1), expected[q].flatten()) for q in QUESTIONS)


def accuracy(model: Lookup, digits: Tensor) -> dict[str, float]:
    """Per question: the share of inputs whose eight answers are all right."""
    with torch.no_grad():
        scores, _ = model(digits)
    expected = answers(digits)
    return {q: (scores[q].argmax(-1) == expected[q]).all(-1).float().mean().item() for q in QUESTIONS}


def ablated(model: Lookup, layer: int, head: int) -> Lookup:
    """A copy of `model` with one head silenced: its columns of `out_proj` set to zero."""
    copy = Lookup(model.heads)
    copy.load_state_dict(model.state_dict())
    width = WIDTH // model.heads
    with torch.no_grad():
        copy.blocks[layer].attention.out_proj.weight[:, head * width : (head + 1) * width] = 0
    return copy.eval()


def patterns(digits: Tensor) -> dict[str, Tensor]:
    """Where each question's look-up would look, as weights (b, 8, 8): row i, the place that answers it.

    - `before`: one place to the left (position 0: position 7).
    - `twin`: the other position holding the same digit.
    """
    b, rows = digits.shape[0], torch.arange(LENGTH)
    ideal = {name: torch.zeros(b, LENGTH, LENGTH) for name in QUESTIONS}
    ideal["before"][:, rows, (rows - 1) % LENGTH] = 1
    ideal["twin"][torch.arange(b)[:, None], rows, answers(digits)["twin"]] = 1
    return ideal


def head_scores(model: Lookup, digits: Tensor) -> dict[tuple[int, int], dict[str, float]]:
    """For every (layer, head): the mean weight it puts where each question's look-up would look."""
    with torch.no_grad():
        _, weights = model(digits)
    ideal = patterns(digits)
    return {
        (layer, head): {name: ((w[:, head] * mask).sum() / mask.sum()).item() for name, mask in ideal.items()}
        for layer, w in enumerate(weights)
        for head in range(model.heads)
    }
