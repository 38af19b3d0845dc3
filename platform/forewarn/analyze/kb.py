"""The knowledge base of an analysis: hypotheses, their status, evidence rows and test statistics.

A finding is a hypothesis about where two models diverge, operationalised as "the divergence of its test
prompts exceeds that of its control prompts". Its status follows from the evidence
(:func:`evaluate`, thresholds in :class:`forewarn.analyze.config.ExperimentConfig`):

- ``supported``: one-sided Mann-Whitney p < alpha and AUC >= min_auc;
- ``refuted``: the one-sided (1 - alpha) bootstrap upper bound of the AUC is below min_auc;
- ``proposed``: not tested yet, or the evidence is inconclusive.

Re-proposing a hypothesis (same text up to case and spacing) adds evidence to the existing finding and
re-evaluates it. The base is stored as ``findings.parquet`` + ``evidence.parquet`` (row types in
:mod:`forewarn.records`) and ``findings.json`` (findings, the analysis log and budget use), and loads back
from an earlier analysis dir so a new analysis continues where that one stopped.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import mannwhitneyu

from forewarn.analyze.config import ExperimentConfig
from forewarn.contrastive.bank import normalise
from forewarn.errors import ConfigError
from forewarn.pipeline.rundir import write_json, write_table
from forewarn.records import EvidenceRow, FindingRow, rows_to_table, stable_id, table_to_rows

STATUSES = ("proposed", "supported", "refuted")


def auc(test: np.ndarray, control: np.ndarray) -> float:
    """P(a test value > a control value), ties counted half (the Mann-Whitney U over n1 * n2)."""
    diff = test[:, None] - control[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def evaluate(test: list[float], control: list[float], cfg: ExperimentConfig) -> dict[str, Any]:
    """Test "test divergences exceed control divergences" (see the module docstring for the rule).

    Returns the statistics fields of a :class:`FindingRow`: n_test, n_control, mean_test, mean_control,
    auc, auc_upper, p_value, status and note.
    """
    t = np.array([x for x in test if math.isfinite(x)], dtype=np.float64)
    c = np.array([x for x in control if math.isfinite(x)], dtype=np.float64)
    out: dict[str, Any] = {
        "n_test": len(t),
        "n_control": len(c),
        "mean_test": _mean(t),
        "mean_control": _mean(c),
        "auc": math.nan,
        "auc_upper": math.nan,
        "p_value": math.nan,
        "status": "proposed",
    }
    if len(t) < cfg.min_prompts or len(c) < cfg.min_prompts:
        return {
            **out,
            "note": f"too few scored prompts ({len(t)} test, {len(c)} control; "
            f"{cfg.min_prompts} per arm needed)",
        }
    a = auc(t, c)
    p = float(mannwhitneyu(t, c, alternative="greater").pvalue)
    rng = np.random.default_rng(cfg.seed)
    boots = np.array([auc(rng.choice(t, len(t)), rng.choice(c, len(c))) for _ in range(cfg.n_bootstrap)])
    upper = float(np.quantile(boots, 1.0 - cfg.alpha))
    if p < cfg.alpha and a >= cfg.min_auc:
        status, note = "supported", f"AUC {a:.2f} >= {cfg.min_auc} and p = {p:.2g} < {cfg.alpha}"
    elif upper < cfg.min_auc:
        status, note = (
            "refuted",
            f"AUC {a:.2f}; its {1 - cfg.alpha:.0%} upper bound {upper:.2f} < {cfg.min_auc}",
        )
    else:
        status, note = (
            "proposed",
            (
                f"inconclusive: AUC {a:.2f} (upper bound {upper:.2f}), p = {p:.2g}; "
                "more prompts would decide it"
            ),
        )
    return {**out, "auc": a, "auc_upper": upper, "p_value": p, "status": status, "note": note}


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


def is_tested(f: FindingRow) -> bool:
    """Whether the finding has been through an experiment (``iteration`` = the cycle it was last tested in)."""
    return f.iteration > 0


@dataclass
class KnowledgeBase:
    """Findings, their evidence and the analysis log of one analysis run (continued across runs)."""

    run_id: str
    findings: list[FindingRow] = field(default_factory=list)
    evidence: list[EvidenceRow] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)  # per cycle: what happened, malformed answers
    cycles_done: int = 0
    cycles_target: int = 0  # cycles_done at which the current run stops (a resumed run goes on to it)

    def find(self, hypothesis: str) -> FindingRow | None:
        key = normalise(hypothesis)
        return next((f for f in self.findings if normalise(f.hypothesis) == key), None)

    def add(self, hypothesis: str, topic: str, rationale: str, cycle: int) -> FindingRow:
        """The finding for ``hypothesis``: the existing one (re-proposed) or a new, untested one."""
        old = self.find(hypothesis)
        if old is not None:
            return old
        nan = math.nan
        f = FindingRow(
            id=stable_id(self.run_id, normalise(hypothesis)),
            run_id=self.run_id,
            iteration=0,
            hypothesis=hypothesis.strip(),
            topic=topic.strip(),
            rationale=rationale.strip(),
            status="proposed",
            cycle_proposed=cycle,
            n_test=0,
            n_control=0,
            mean_test=nan,
            mean_control=nan,
            auc=nan,
            auc_upper=nan,
            p_value=nan,
            note="not tested yet",
        )
        self.findings.append(f)
        return f

    def arm(self, finding: FindingRow, arm: str) -> list[float]:
        return [e.divergence for e in self.evidence if e.finding_id == finding.id and e.arm == arm]

    def retest(self, finding: FindingRow, cycle: int, cfg: ExperimentConfig) -> None:
        """Re-evaluate a finding on all its evidence so far (its statistics, status and note)."""
        for k, v in evaluate(self.arm(finding, "test"), self.arm(finding, "control"), cfg).items():
            setattr(finding, k, v)
        finding.iteration = cycle

    def counts(self) -> dict[str, int]:
        return {s: sum(f.status == s for f in self.findings) for s in STATUSES}

    # ------------------------------------------------------------ storage

    def save(self, root: Path, extra: dict[str, Any] | None = None) -> None:
        """Write findings.parquet, evidence.parquet and findings.json (atomically) under ``root``."""
        write_table(root / "findings.parquet", rows_to_table(FindingRow, self.findings))
        write_table(root / "evidence.parquet", rows_to_table(EvidenceRow, self.evidence))
        doc = {
            "run_id": self.run_id,
            "cycles_done": self.cycles_done,
            "cycles_target": self.cycles_target,
            "counts": self.counts(),
            "findings": [_json_safe(asdict(r)) for r in self.findings],
            "log": self.log,
            **(extra or {}),
        }
        write_json(root / "findings.json", doc)

    @classmethod
    def load(cls, root: Path, run_id: str) -> KnowledgeBase:
        """The knowledge base of an earlier analysis in ``root``, continued under ``run_id``."""
        import pyarrow.parquet as pq

        doc_path = root / "findings.json"
        if not doc_path.is_file() or not (root / "evidence.parquet").is_file():
            raise ConfigError(
                f"continue_from={str(root)!r}: no findings.json / evidence.parquet there; pass "
                "the output dir of an earlier analysis"
            )
        doc = json.loads(doc_path.read_text())
        kb = cls(
            run_id=run_id,
            log=list(doc.get("log", [])),
            cycles_done=int(doc.get("cycles_done", 0)),
            cycles_target=int(doc.get("cycles_target", 0)),
        )
        kb.evidence = table_to_rows(EvidenceRow, pq.read_table(root / "evidence.parquet"))
        kb.findings = table_to_rows(FindingRow, pq.read_table(root / "findings.parquet"))
        for f in kb.findings:
            f.run_id = run_id
        return kb


def _json_safe(d: dict) -> dict:
    """NaN -> None, so findings.json is strict JSON that any browser or tool reads."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
