"""The loop detector: the reference MLP over self-similarity features, its training, metrics and persistence.

Network (reference section 5): Linear(d->120)+ReLU, Linear(120->30)+LayerNorm+ReLU,
Linear(30->10)+LayerNorm+ReLU, Linear(10->1), sigmoid; Kaiming-normal weights, zero biases; inputs
standardised with the train mean/std; per-sample BCE weighted by normalised inverse class frequency times
``class_weights`` (a false positive -- cutting off a healthy answer -- costs ~1000x a miss); AdamW with a
linear decay to 0; a stratified split with a fixed seed (the original had none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from forewarn.recurrence.config import ClassifierSection, FeatureSection


class LoopMLP(nn.Module):
    def __init__(self, dim: int, hidden: list[int]):
        super().__init__()
        layers: list[nn.Module] = []
        prev = dim
        for k, h in enumerate(hidden):
            layers.append(nn.Linear(prev, h))
            if k > 0:
                layers.append(nn.LayerNorm(h))
            layers.append(nn.ReLU())
            prev = h
        layers.append(nn.Linear(prev, 1))
        self.net = nn.Sequential(*layers)
        for m in self.net:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)  # logits; probability = sigmoid


def classify_stats(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """Recall, false-positive rate, precision, F1 and accuracy with positive = recurrent."""
    y_true, y_pred = np.asarray(y_true).astype(bool), np.asarray(y_pred).astype(bool)
    tp = int((y_true & y_pred).sum())
    fp = int((~y_true & y_pred).sum())
    fn = int((y_true & ~y_pred).sum())
    tn = int((~y_true & ~y_pred).sum())
    recall = tp / (tp + fn) if tp + fn else 0.0
    precision = tp / (tp + fp) if tp + fp else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "recall": recall,
        "fpr": fp / (fp + tn) if fp + tn else 0.0,
        "precision": precision,
        "f1": f1,
        "accuracy": (tp + tn) / max(1, len(y_true)),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "n": int(len(y_true)),
    }


@dataclass
class LoopDetector:
    """A trained detector: the MLP, the standardisation and the feature config it was trained with."""

    features: FeatureSection
    classifier: ClassifierSection
    mlp: LoopMLP
    mean: np.ndarray
    std: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @torch.inference_mode()
    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = torch.as_tensor((np.asarray(x, dtype=np.float32) - self.mean) / self.std)
        return torch.sigmoid(self.mlp(z)).numpy()

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.probabilities(x) >= self.classifier.threshold

    def save(self, directory: str | Path) -> Path:
        """``detector.pt`` (weights, mean, std) and ``detector.yaml`` (feature + classifier config, info)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        torch.save(
            {"state_dict": self.mlp.state_dict(), "mean": self.mean, "std": self.std}, d / "detector.pt"
        )
        meta = {
            "features": self.features.model_dump(mode="json"),
            "classifier": self.classifier.model_dump(mode="json"),
            "info": self.info,
        }
        (d / "detector.yaml").write_text(
            yaml.safe_dump(json.loads(json.dumps(meta, default=str)), sort_keys=False)
        )
        return d

    @classmethod
    def load(cls, directory: str | Path) -> "LoopDetector":
        d = Path(directory)
        if not (d / "detector.yaml").is_file() or not (d / "detector.pt").is_file():
            raise FileNotFoundError(
                f"{str(d)!r} holds no detector (detector.yaml + detector.pt); train one with "
                "`forewarn recurrence detect`"
            )
        meta = yaml.safe_load((d / "detector.yaml").read_text())
        feats = FeatureSection.model_validate(meta["features"])
        clf = ClassifierSection.model_validate(meta["classifier"])
        blob = torch.load(d / "detector.pt", weights_only=False)
        mlp = LoopMLP(feats.detection_length, clf.hidden)
        mlp.load_state_dict(blob["state_dict"])
        mlp.eval()
        return cls(feats, clf, mlp, blob["mean"], blob["std"], meta.get("info", {}))


def split(labels: np.ndarray, train_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified train/test indices with a fixed seed."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    tr, te = train_test_split(idx, train_size=train_fraction, stratify=labels, random_state=seed)
    return np.sort(tr), np.sort(te)


def train_detector(
    x: np.ndarray, y: np.ndarray, features_cfg: FeatureSection, cfg: ClassifierSection, seed: int = 0
) -> LoopDetector:
    """Train the MLP on (x, y) (all of it: split beforehand) and return the detector."""
    torch.manual_seed(seed)
    x = np.asarray(x, dtype=np.float32)
    y = np.asarray(y, dtype=np.float32)
    if len(np.unique(y)) < 2:
        raise ValueError(
            "detector training needs both recurrent and non-recurrent samples; collect more "
            "(e.g. add search runs with triggers, or testbed prompts)"
        )
    mean, std = x.mean(axis=0), x.std(axis=0) + 1e-6
    xt = torch.as_tensor((x - mean) / std)
    yt = torch.as_tensor(y)
    counts = np.array([(y == 0).sum(), (y == 1).sum()], dtype=np.float64)
    w = (1.0 / counts) / (1.0 / counts).sum() * np.asarray(cfg.class_weights)
    w = w / w.sum()
    sample_w = torch.as_tensor(np.where(y == 1, w[1], w[0]), dtype=torch.float32)
    mlp = LoopMLP(x.shape[1], cfg.hidden)
    opt = torch.optim.AdamW(mlp.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = int(np.ceil(len(y) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / (cfg.epochs * steps_per_epoch)))
    gen = torch.Generator().manual_seed(seed)
    mlp.train()
    for _ in range(cfg.epochs):
        perm = torch.randperm(len(y), generator=gen)
        for i in range(0, len(y), cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            loss = (
                nn.functional.binary_cross_entropy_with_logits(
                    mlp(xt[b]), yt[b], weight=sample_w[b], reduction="sum"
                )
                / sample_w[b].sum()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    mlp.eval()
    return LoopDetector(features_cfg, cfg, mlp, mean, std)


def train_and_evaluate(
    x: np.ndarray, y: np.ndarray, features_cfg: FeatureSection, cfg: ClassifierSection, seed: int = 0
) -> tuple[LoopDetector, dict[str, Any]]:
    """Split, train, and report ``train_stats`` and ``classify_stats`` (held-out) as the reference does."""
    tr, te = split(y, cfg.train_fraction, seed)
    det = train_detector(x[tr], y[tr], features_cfg, cfg, seed)
    report = {
        "train_stats": classify_stats(y[tr], det.predict(x[tr])),
        "classify_stats": classify_stats(y[te], det.predict(x[te])),
        "train_index": tr.tolist(),
        "test_index": te.tolist(),
    }
    det.info = {
        "train_stats": report["train_stats"],
        "classify_stats": report["classify_stats"],
        "seed": seed,
    }
    return det, report
