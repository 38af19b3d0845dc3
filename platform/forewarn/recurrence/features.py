"""Detector features from the target's own activations: a self-similarity profile over the response tokens.

``mlp_activation`` (the reference, RecurrentDetector): in every decoder layer the MLP activation's input (the
gate pre-activation) is binarised (on = > 0); positions i, j agree on a share S[i, j] of those units;
m_i = max over j != i of S[i, j]; the feature is sort_desc(m) zero-padded to ``detection_length``. A loop
makes many positions near-copies of earlier ones, so the sorted profile stays high. ``hidden_state``
(cheaper): the same profile from the cosine similarity of last-layer hidden states (the final norm's output).

Both kinds are a dot product of per-token vectors followed by an affine map: a token's units as +-1
(agreement = (1 + v_i . v_j / U) / 2) or its unit-normalised hidden state (cosine = v_i . v_j). The
vectors come from forward hooks (:class:`TokenVectorHooks`) and go into :class:`SimilarityWindows`, which
keeps the last ``detection_length`` vectors of each row and folds new ones into the similarity matrix
incrementally. Training features (:func:`features`: one forward pass over the rendered prompt plus the
response, exactly the context the generation saw) and run-time features (:mod:`forewarn.recurrence.capture`:
the same hooks during ``generate``) both go through these two classes, so they are computed the same way.
The reference embedded the response's Python list repr and repeated the feature twice; here it is one
vector over the response tokens in their real context.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import torch

from forewarn.recurrence.config import FeatureSection

Kind = Literal["mlp_activation", "hidden_state"]
ACT_NAMES = ("act_fn", "act")  # Llama / Mistral / Gemma / Qwen: mlp.act_fn; GPT-2: mlp.act
NORM_NAMES = ("norm", "ln_f", "final_layer_norm")  # the final norm of Llama-likes / GPT-2 / OPT


def activation_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The MLP activation module of every decoder layer (its input is the pre-activation the feature uses)."""
    found = [
        m
        for name, m in model.named_modules()
        if name.split(".")[-1] in ACT_NAMES and ".mlp." in f".{name}" and isinstance(m, torch.nn.Module)
    ]
    if not found:
        raise ValueError(
            f"{type(model).__name__}: no MLP activation module (mlp.act_fn / mlp.act) found; use "
            "features.kind=hidden_state for this architecture"
        )
    return found


def final_norm(model: torch.nn.Module) -> torch.nn.Module:
    """The norm after the last decoder layer: its output is ``hidden_states[-1]`` of a HF forward pass."""
    base = getattr(model, "base_model", model)
    for holder in (base, getattr(base, "decoder", None)):
        for name in NORM_NAMES:
            mod = getattr(holder, name, None) if holder is not None else None
            if isinstance(mod, torch.nn.Module):
                return mod
    raise ValueError(
        f"{type(model).__name__}: no final norm ({', '.join(NORM_NAMES)}) found for "
        "features.kind=hidden_state"
    )


class TokenVectorHooks:
    """Forward hooks that turn each forward pass of ``model`` into per-token vectors (B, s, D).

    Before a forward pass the top-level pre-hook asks ``begin(input_ids, past_len)`` whether to capture it
    (``past_len`` = tokens already in the KV cache, 0 for a prefill or a plain forward); if so, the layer
    hooks collect their part and the top-level hook hands the vectors to ``take``. Vectors: +-1 per MLP
    unit for ``mlp_activation`` (D = layers x intermediate), unit-normalised final hidden states for
    ``hidden_state``. Call :meth:`close` to remove the hooks.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        kind: Kind,
        begin: Callable[[torch.Tensor, int], bool],
        take: Callable[[torch.Tensor], None],
    ):
        import threading

        self.kind, self.begin, self.take = kind, begin, take
        self._local = threading.local()
        mods = activation_modules(model) if kind == "mlp_activation" else [final_norm(model)]
        self._handles = [
            model.register_forward_pre_hook(self._top_pre, with_kwargs=True),
            model.register_forward_hook(self._top_post),
        ]
        if kind == "mlp_activation":
            self._handles += [m.register_forward_pre_hook(self._act_pre) for m in mods]
        else:
            self._handles += [m.register_forward_hook(self._norm_post) for m in mods]

    def _top_pre(self, _m: Any, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is None:
            raise ValueError(
                "the loop detector's hooks need input_ids (not inputs_embeds) in the forward pass"
            )
        cache = kwargs.get("past_key_values")
        past = int(cache.get_seq_length()) if cache is not None and hasattr(cache, "get_seq_length") else 0
        self._local.parts = [] if self.begin(ids, past) else None

    def _act_pre(self, _m: Any, args: tuple) -> None:
        parts = getattr(self._local, "parts", None)
        if parts is not None:
            parts.append(args[0] > 0)

    def _norm_post(self, _m: Any, _args: tuple, out: Any) -> None:
        parts = getattr(self._local, "parts", None)
        if parts is not None:
            h = out[0] if isinstance(out, tuple) else out
            parts.append(torch.nn.functional.normalize(h.detach().float(), dim=-1))

    def _top_post(self, _m: Any, _args: tuple, _out: Any) -> None:
        parts = getattr(self._local, "parts", None)
        self._local.parts = None
        if not parts:
            return
        if self.kind == "mlp_activation":
            self.take(torch.cat(parts, dim=-1).float().mul_(2.0).sub_(1.0))  # on/off -> +-1
        else:
            self.take(parts[-1])

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class SimilarityWindows:
    """The last ``length`` token vectors of each of ``rows`` rows, and their pairwise similarities.

    ``push`` writes the new positions' vectors into a ring buffer and folds them into the (length x length)
    similarity matrix at once -- one (new x length) product per row -- and into each token's best match, so
    a check only sorts the best matches (and runs the MLP). The diagonal stays 0, which is the reference's "zero the
    diagonal, max over the others, clamp at 0". The profile does not depend on the ring's order, so old
    tokens simply drop out of the window. Memory: rows x length x (D + length) floats.
    """

    def __init__(self, rows: int, length: int, dim: int, kind: Kind, device: torch.device | str = "cpu"):
        self.length, self.kind = length, kind
        self.scale = 0.5 / dim if kind == "mlp_activation" else 1.0  # agreement = 0.5 + dot / (2D)
        self.offset = 0.5 if kind == "mlp_activation" else 0.0
        self.vecs = torch.zeros(rows, length, dim, device=device)
        self.sim = torch.zeros(rows, length, length, device=device)
        self.rmax = torch.zeros(rows, length, device=device)  # per token: its best match in the window
        self.rarg = torch.zeros(rows, length, dtype=torch.long, device=device)  # ... and that match's slot
        self.count = 0  # vectors pushed per row (every row gets one per decoded position)

    @torch.inference_mode()
    def push(self, vecs: torch.Tensor) -> None:
        """Append (rows, s, D) vectors, one per new position of every row, and fold them into ``sim``."""
        s, size = vecs.shape[1], self.length
        keep = min(s, size)
        slots = torch.tensor([(self.count + k) % size for k in range(s - keep, s)], device=self.vecs.device)
        self.vecs[:, slots] = vecs[:, s - keep :]
        self.count += s
        n = min(self.count, size)
        rows = (
            torch.bmm(self.vecs[:, slots], self.vecs[:, :n].transpose(1, 2))
            .mul_(self.scale)
            .add_(self.offset)
        )
        self.sim[:, slots, :n] = rows
        self.sim[:, :n, slots] = rows.transpose(1, 2)
        self.sim[:, slots, slots] = 0.0
        self._update_row_max(slots, n)

    def _update_row_max(self, slots: torch.Tensor, n: int) -> None:
        """Keep ``rmax[b, i] = max_j sim[b, i, j]`` current: the new columns can only raise a row's max, except
        in rows whose max sat in an overwritten slot (or new rows), which are recomputed from their row."""
        col_max, col_arg = self.sim[:, :n, slots].max(dim=2)
        stale = torch.isin(self.rarg[:, :n], slots)
        stale[:, slots] = True
        better = col_max > self.rmax[:, :n]
        self.rmax[:, :n] = torch.where(better, col_max, self.rmax[:, :n])
        self.rarg[:, :n] = torch.where(better, slots[col_arg], self.rarg[:, :n])
        b, i = stale.nonzero(as_tuple=True)
        if len(b):
            full_max, full_arg = self.sim[b, i, :n].max(dim=1)
            self.rmax[b, i], self.rarg[b, i] = full_max, full_arg

    @torch.inference_mode()
    def profile_tensor(self, row: int) -> torch.Tensor:
        """sort_desc(max_{j != i} S[i, j]) over the row's window, zero-padded to ``length`` (a 1-D tensor)."""
        n = min(self.count, self.length)
        out = torch.zeros(self.length, device=self.vecs.device)
        if n >= 2:
            out[:n] = torch.sort(self.rmax[row, :n].clamp(min=0.0), descending=True).values
        return out

    def profile(self, row: int = 0) -> np.ndarray:
        return self.profile_tensor(row).cpu().numpy().astype(np.float32)


@torch.inference_mode()
def response_feature(
    model: torch.nn.Module, prompt_ids: Sequence[int], response_ids: Sequence[int], length: int, kind: Kind
) -> np.ndarray:
    """The feature of one response's first ``length`` tokens, from one forward pass over prompt + response.

    The vectors of the response positions are those the generation computed for the same tokens (same
    context, same hooks), so a detector trained on these features sees at run time what it was trained on.
    """
    resp = list(response_ids)[:length]
    if len(resp) < 2:
        return np.zeros(length, dtype=np.float32)
    prompt = list(prompt_ids)
    got: list[torch.Tensor] = []
    hooks = TokenVectorHooks(model, kind, lambda _ids, _past: True, got.append)
    try:
        device = next(model.parameters()).device
        model(input_ids=torch.tensor([prompt + resp], device=device))
    finally:
        hooks.close()
    vecs = got[0][:, len(prompt) :]
    win = SimilarityWindows(1, length, vecs.shape[-1], kind, vecs.device)
    win.push(vecs)
    return win.profile(0)


def features(
    generator: Any, samples: Sequence[tuple[str, Sequence[int]]], cfg: FeatureSection, progress: bool = False
) -> np.ndarray:
    """Features of many (prompt, response ids) samples, shape (N, detection_length).

    ``generator`` is the :class:`~forewarn.models.hf.HFGenerator` of the target: its ``encode`` renders the
    prompt exactly as generation did (chat template, truncation). One forward pass per sample.
    """
    from rich.progress import track

    items = track(samples, description=f"features ({cfg.kind})") if progress else samples
    out = []
    for prompt, ids in items:
        prompt_ids = generator.encode([prompt])["input_ids"][0].tolist()
        out.append(response_feature(generator.model, prompt_ids, ids, cfg.detection_length, cfg.kind))
    return np.stack(out) if out else np.zeros((0, cfg.detection_length), dtype=np.float32)
