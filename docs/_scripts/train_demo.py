"""Train the digit-reversing transformer of the attention-weights guide and the explorer.

Run from the repository root (under two minutes on 2 CPU cores):

    python docs/_scripts/train_demo.py

Seeded: the same machine gives the same weights. Writes docs/_data/reverse.pt;
the last line printed is the exact-match accuracy on held-out sequences,
which never appear in training.
"""

from __future__ import annotations

import sys
import time

import torch
from demo_model import WEIGHTS, Reverser, accuracy, batch
from torch import nn

STEPS, BATCH, LR = 1500, 256, 3e-3


def progress(step: int, loss: float, start: float) -> None:
    done = (step + 1) / STEPS
    bar = "#" * int(30 * done) + "." * (30 - int(30 * done))
    sys.stderr.write(f"\r[{bar}] step {step + 1}/{STEPS}  loss {loss:.4f}  {time.perf_counter() - start:.0f}s")
    if step + 1 == STEPS:
        sys.stderr.write("\n")


def train() -> Reverser:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    model = Reverser()
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=STEPS, pct_start=0.1)
    loss_fn = nn.CrossEntropyLoss()
    start = time.perf_counter()
    for step in range(STEPS):
        digits = batch(BATCH, generator, training=True)
        logits, _ = model(digits)
        loss = loss_fn(logits.flatten(0, 1), digits.flip(-1).flatten())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        if step % 50 == 0 or step + 1 == STEPS:
            progress(step, loss.item(), start)
    return model.eval()


def main() -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = train()
    WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), WEIGHTS)
    held_out = batch(4000, torch.Generator().manual_seed(1), training=False)
    print(f"wrote {WEIGHTS}")
    print(f"held-out exact-match accuracy: {accuracy(model, held_out):.4f}")


if __name__ == "__main__":
    main()
