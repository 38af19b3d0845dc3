"""Plain torch training loops for the testbed models: fast, single-threaded and deterministic.

AdamW (betas 0.9/0.98), linear warm-up then cosine decay to 0.1x, gradient clipping at 1.0, loss on the
response tokens only. Batches are grouped by length inside shuffled chunks so the long loop examples do not
pad every batch (roughly halves the step time).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerFast

from forewarn.testbed.data import Example

IGNORE = -100


def render_chat_prompt(tok: PreTrainedTokenizerFast, prompt: str) -> str:
    """The user turn plus the assistant marker, rendered as text (transformers 5: tokenize=False)."""
    return tok.apply_chat_template(
        [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
    )


def encode(
    tok: PreTrainedTokenizerFast, examples: Sequence[Example], chat: bool, max_response_tokens: int
) -> list[tuple[list[int], list[int]]]:
    """Token ids and labels (prompt masked) per example; ``chat`` wraps the prompt in the chat template."""
    prompts = [render_chat_prompt(tok, e.prompt) if chat else e.prompt for e in examples]
    p_ids = tok(prompts, add_special_tokens=False)["input_ids"]
    r_ids = tok([e.response for e in examples], add_special_tokens=False)["input_ids"]
    out = []
    for e, p, r in zip(examples, p_ids, r_ids):
        r = r[:max_response_tokens] + ([tok.eos_token_id] if e.eos else [])
        out.append((p + r, [IGNORE] * len(p) + r))
    return out


def length_grouped_batches(
    n: int, lengths: Sequence[int], batch_size: int, rng: random.Random, steps: int
) -> list[list[int]]:
    """``steps`` batches of indices: epochs of shuffled chunks (8 batches each) sorted by length."""
    batches: list[list[int]] = []
    chunk = batch_size * 8
    while len(batches) < steps:
        order = list(range(n))
        rng.shuffle(order)
        epoch = []
        for s in range(0, n - batch_size + 1, chunk):
            part = sorted(order[s : s + chunk], key=lambda i: lengths[i])
            epoch += [part[j : j + batch_size] for j in range(0, len(part) - batch_size + 1, batch_size)]
        rng.shuffle(epoch)
        batches += epoch
    return batches[:steps]


def collate(rows: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    width = max(len(ids) for ids, _ in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (x, y) in enumerate(rows):
        ids[i, : len(x)] = torch.tensor(x)
        labels[i, : len(y)] = torch.tensor(y)
        mask[i, : len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def lr_lambda(warmup: int, total: int, floor: float = 0.1) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return f


def train(
    model: torch.nn.Module,
    tok: PreTrainedTokenizerFast,
    examples: Sequence[Example],
    *,
    steps: int,
    seed: int,
    chat: bool = True,
    batch_size: int = 32,
    lr: float = 3e-3,
    warmup: int = 20,
    max_response_tokens: int = 96,
    progress: Callable[[int], None] | None = None,
) -> list[float]:
    """Train ``model`` in place on ``examples`` for ``steps`` steps; returns the per-step losses.

    Causal-LM loss (mean over response tokens). Deterministic for a given seed on CPU with one thread.
    """
    torch.manual_seed(seed)
    rows = encode(tok, examples, chat, max_response_tokens)
    batches = length_grouped_batches(
        len(rows), [len(r[0]) for r in rows], batch_size, random.Random(f"batches-{seed}"), steps
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(min(warmup, steps // 4 or 1), steps))
    model.train()
    losses = []
    for batch in batches:
        enc = collate([rows[i] for i in batch], tok.pad_token_id)
        loss = model(**enc).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(float(loss))
        if progress is not None:
            progress(1)
    model.eval()
    return losses
