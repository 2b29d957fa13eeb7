"""Train the small transformers of the site: the digit reverser and the explorer's look-up model.

Run from the repository root (each under a minute on 2 CPU cores):

    python docs/_scripts/train_demo.py            # all three
    python docs/_scripts/train_demo.py lookup     # docs/_data/lookup.pt, for the explorer
    python docs/_scripts/train_demo.py lookup-one-head   # docs/_data/lookup-one-head.pt, its one-head control
    python docs/_scripts/train_demo.py reverse    # docs/_data/reverse.pt, for the attention-weights guide

Seeded and run on one thread: the same torch build gives the same weights.
The last line printed per model is its exact-match accuracy on held-out
inputs, which never appear in training; for the look-up model, per question,
and what each head does (lookup_model.head_scores) and what silencing it costs.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import demo_model
import lookup_model
import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class Task:
    name: str
    model: Callable[[], nn.Module]
    batch: Callable[..., Tensor]
    loss: Callable[[nn.Module, Tensor], Tensor]
    steps: int
    size: int  # sequences per step
    lr: float
    seed: int = 0


def reverse_loss(model: nn.Module, digits: Tensor) -> Tensor:
    logits, _ = model(digits)
    return nn.functional.cross_entropy(logits.flatten(0, 1), digits.flip(-1).flatten())


TASKS = {
    "reverse": Task("reverse", demo_model.Reverser, demo_model.batch, reverse_loss, 1500, 256, 3e-3),
    # From seed 1 the content head learns the mirror image instead (it looks everywhere except at its
    # own digit and reads the twin from the gap); silencing separates the two jobs just as well.
    "lookup": Task("lookup", lookup_model.Lookup, lookup_model.batch, lookup_model.loss, 800, 128, 1e-2),
    "lookup-one-head": Task(
        "lookup-one-head", lookup_model.one_head, lookup_model.batch, lookup_model.loss, 800, 128, 1e-2
    ),
}


def progress(step: int, steps: int, loss: float, start: float) -> None:
    done = (step + 1) / steps
    bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
    sys.stderr.write(f"\r[{bar}] step {step + 1}/{steps}  loss {loss:.4f}  {time.perf_counter() - start:.0f}s")
    if step + 1 == steps:
        sys.stderr.write("\n")


def train(task: Task) -> nn.Module:
    torch.manual_seed(task.seed)
    generator = torch.Generator().manual_seed(task.seed)
    model = task.model()
    optimizer = torch.optim.AdamW(model.parameters(), lr=task.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=task.lr, total_steps=task.steps, pct_start=0.1)
    start = time.perf_counter()
    for step in range(task.steps):
        loss = task.loss(model, task.batch(task.size, generator, training=True))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step + 1 == task.steps:
            progress(step, task.steps, loss.item(), start)
    return model.eval()


def report_lookup(model: lookup_model.Lookup, held_out: Tensor) -> None:
    for (layer, head), scores in lookup_model.head_scores(model, held_out).items():
        silenced = lookup_model.accuracy(lookup_model.ablated(model, layer, head), held_out)
        print(
            f"layer {layer} head {head}: looks where "
            + ", ".join(f"{name} {value:.2f}" for name, value in scores.items())
            + "; silenced, all right: "
            + ", ".join(f"{name} {value:.4f}" for name, value in silenced.items())
        )


def main(names: list[str]) -> None:
    torch.set_num_threads(1)  # tiny matrices: one thread is as fast, and the sums are always the same
    for name in names or list(TASKS):
        module = demo_model if name == "reverse" else lookup_model
        model = train(TASKS[name])
        path = lookup_model.ONE_HEAD_WEIGHTS if name == "lookup-one-head" else module.WEIGHTS
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
        held_out = module.batch(4000, torch.Generator().manual_seed(1), training=False)
        print(f"wrote {path}")
        if name == "lookup":
            report_lookup(model, held_out)
        print(f"{name}: held-out exact-match accuracy {module.accuracy(model, held_out)}")


if __name__ == "__main__":
    main(sys.argv[1:])
