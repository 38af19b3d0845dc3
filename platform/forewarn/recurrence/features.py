"""Detector features from the target's internals: a self-similarity profile over the response tokens.

``mlp_activation`` (the reference, RecurrentDetector): one forward pass over the first ``detection_length``
response tokens; in every decoder layer the MLP activation's input (the gate pre-activation) is binarised
(on = > 0); positions i, j agree on a share S[i, j] of those units; m_i = max over j != i of S[i, j]; the
feature is sort_desc(m) zero-padded to ``detection_length``. A loop makes many positions near-copies of
earlier ones, so the sorted profile stays high. The reference's feature repeated the same vector twice and
embedded the response's Python list repr; here it is one vector over the response's own token ids.

``hidden_state`` (cheaper): the same profile from the cosine similarity of last-layer hidden states, with no
hooks and a hidden-size (not layers x intermediate) Gram matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from forewarn.recurrence.config import FeatureSection

ACT_NAMES = ("act_fn", "act")  # Llama / Mistral / Gemma / Qwen: mlp.act_fn; GPT-2: mlp.act


def activation_modules(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The MLP activation module of every decoder layer (its input is the pre-activation the feature uses)."""
    found = [m for name, m in model.named_modules()
             if name.split(".")[-1] in ACT_NAMES and ".mlp." in f".{name}" and isinstance(m, torch.nn.Module)]
    if not found:
        raise ValueError(f"{type(model).__name__}: no MLP activation module (mlp.act_fn / mlp.act) found; use "
                         "features.kind=hidden_state for this architecture")
    return found


def _profile(sim: torch.Tensor, length: int) -> np.ndarray:
    """Zero the diagonal, take each row's max, sort descending, pad with zeros to ``length``."""
    sim = sim.clone()
    sim.fill_diagonal_(0.0)
    m = sim.max(dim=1).values.clamp(min=0.0) if sim.shape[0] > 1 else torch.zeros(sim.shape[0])
    out = np.zeros(length, dtype=np.float32)
    vals = torch.sort(m, descending=True).values[:length].float().cpu().numpy()
    out[: len(vals)] = vals
    return out


@torch.inference_mode()
def mlp_activation_feature(model: torch.nn.Module, token_ids: Sequence[int], length: int) -> np.ndarray:
    """The reference feature for one response (its first ``length`` token ids)."""
    ids = list(token_ids)[:length]
    if len(ids) < 2:
        return np.zeros(length, dtype=np.float32)
    acts: list[torch.Tensor] = []
    hooks = [m.register_forward_pre_hook(lambda _m, inp: acts.append((inp[0][0] > 0).float()))
             for m in activation_modules(model)]
    try:
        device = next(model.parameters()).device
        model(input_ids=torch.tensor([ids], device=device))
    finally:
        for h in hooks:
            h.remove()
    b = torch.cat(acts, dim=-1)  # (seq, layers x intermediate) on/off units
    units = b.shape[1]
    on = b.sum(dim=1)
    agree = (units - on[:, None] - on[None, :] + 2.0 * (b @ b.T)) / units
    return _profile(agree, length)


@torch.inference_mode()
def hidden_state_feature(model: torch.nn.Module, token_ids: Sequence[int], length: int) -> np.ndarray:
    """The cheaper variant: cosine similarity of last-layer hidden states."""
    ids = list(token_ids)[:length]
    if len(ids) < 2:
        return np.zeros(length, dtype=np.float32)
    device = next(model.parameters()).device
    out = model(input_ids=torch.tensor([ids], device=device), output_hidden_states=True)
    h = torch.nn.functional.normalize(out.hidden_states[-1][0].float(), dim=-1)
    return _profile(h @ h.T, length)


def feature(model: torch.nn.Module, token_ids: Sequence[int], cfg: FeatureSection) -> np.ndarray:
    """The configured feature of one response."""
    fn = mlp_activation_feature if cfg.kind == "mlp_activation" else hidden_state_feature
    return fn(model, token_ids, cfg.detection_length)


def features(model: torch.nn.Module, responses: Sequence[Sequence[int]], cfg: FeatureSection,
             progress: bool = False) -> np.ndarray:
    """Features of many responses, shape (N, detection_length). One forward pass each (lengths differ)."""
    from rich.progress import track

    items = track(responses, description=f"features ({cfg.kind})") if progress else responses
    return np.stack([feature(model, r, cfg) for r in items]) if len(responses) else np.zeros(
        (0, cfg.detection_length), dtype=np.float32)
