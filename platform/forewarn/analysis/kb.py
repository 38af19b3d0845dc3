"""The knowledge base of an analysis: hypotheses, their status, evidence rows and test statistics.

A finding is a hypothesis about where two models diverge, operationalised as "the divergence of its test
prompts exceeds that of its control prompts". Its status follows from the evidence
(:func:`evaluate`, thresholds in :class:`forewarn.analysis.config.ExperimentConfig`):

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

from forewarn.analysis.config import ExperimentConfig
from forewarn.contrastive.bank import normalise
from forewarn.errors import ConfigError
from forewarn.pipeline.rundir import write_json, write_table
from forewarn.records import EvidenceRow, FindingRow, rows_to_table, stable_id, table_to_rows

STATUSES = ("proposed", "supported", "refuted")


@dataclass
class TestResult:
    """The statistics of one hypothesis test."""

    n_test: int
    n_control: int
    mean_test: float
    mean_control: float
    auc: float
    auc_upper: float
    p_value: float
    status: str
    note: str


def auc(test: np.ndarray, control: np.ndarray) -> float:
    """P(a test value > a control value), ties counted half (the Mann-Whitney U over n1 * n2)."""
    diff = test[:, None] - control[None, :]
    return float(((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)


def evaluate(test: list[float], control: list[float], cfg: ExperimentConfig) -> TestResult:
    """Test "test divergences exceed control divergences" (see the module docstring for the rule)."""
    t = np.array([x for x in test if math.isfinite(x)], dtype=np.float64)
    c = np.array([x for x in control if math.isfinite(x)], dtype=np.float64)
    if len(t) < cfg.min_prompts or len(c) < cfg.min_prompts:
        return TestResult(len(t), len(c), _mean(t), _mean(c), math.nan, math.nan, math.nan, "proposed",
                          f"too few scored prompts ({len(t)} test, {len(c)} control; "
                          f"{cfg.min_prompts} per arm needed)")
    a = auc(t, c)
    p = float(mannwhitneyu(t, c, alternative="greater").pvalue)
    rng = np.random.default_rng(cfg.seed)
    boots = np.array([auc(rng.choice(t, len(t)), rng.choice(c, len(c))) for _ in range(cfg.n_bootstrap)])
    upper = float(np.quantile(boots, 1.0 - cfg.alpha))
    if p < cfg.alpha and a >= cfg.min_auc:
        status, note = "supported", f"AUC {a:.2f} >= {cfg.min_auc} and p = {p:.2g} < {cfg.alpha}"
    elif upper < cfg.min_auc:
        status, note = "refuted", f"AUC {a:.2f}; its {1 - cfg.alpha:.0%} upper bound {upper:.2f} < {cfg.min_auc}"
    else:
        status, note = "proposed", (f"inconclusive: AUC {a:.2f} (upper bound {upper:.2f}), p = {p:.2g}; "
                                    "more prompts would decide it")
    return TestResult(len(t), len(c), _mean(t), _mean(c), a, upper, p, status, note)


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if len(x) else math.nan


@dataclass
class Finding:
    """One hypothesis and what is known about it (the live form of a :class:`FindingRow`)."""

    id: str
    hypothesis: str
    topic: str = ""
    rationale: str = ""
    cycle_proposed: int = 0
    cycle_tested: int = 0
    result: TestResult | None = None
    planted_topic: str | None = None

    @property
    def status(self) -> str:
        return self.result.status if self.result else "proposed"


@dataclass
class KnowledgeBase:
    """Findings, their evidence and the analysis log of one analysis run (continued across runs)."""

    run_id: str
    findings: list[Finding] = field(default_factory=list)
    evidence: list[EvidenceRow] = field(default_factory=list)
    log: list[dict[str, Any]] = field(default_factory=list)  # per cycle: what happened, malformed answers
    cycles_done: int = 0
    cycles_target: int = 0  # cycles_done at which the current run stops (a resumed run goes on to it)

    def find(self, hypothesis: str) -> Finding | None:
        key = normalise(hypothesis)
        return next((f for f in self.findings if normalise(f.hypothesis) == key), None)

    def add(self, hypothesis: str, topic: str, rationale: str, cycle: int) -> Finding:
        """The finding for ``hypothesis``: the existing one (re-proposed) or a new one."""
        old = self.find(hypothesis)
        if old is not None:
            return old
        f = Finding(id=stable_id(self.run_id, normalise(hypothesis)), hypothesis=hypothesis.strip(),
                    topic=topic.strip(), rationale=rationale.strip(), cycle_proposed=cycle)
        self.findings.append(f)
        return f

    def arm(self, finding: Finding, arm: str) -> list[float]:
        return [e.divergence for e in self.evidence if e.finding_id == finding.id and e.arm == arm]

    def retest(self, finding: Finding, cycle: int, cfg: ExperimentConfig) -> TestResult:
        """Re-evaluate a finding on all its evidence so far."""
        finding.result = evaluate(self.arm(finding, "test"), self.arm(finding, "control"), cfg)
        finding.cycle_tested = cycle
        return finding.result

    def counts(self) -> dict[str, int]:
        return {s: sum(f.status == s for f in self.findings) for s in STATUSES}

    # ------------------------------------------------------------ storage

    def rows(self) -> list[FindingRow]:
        nan = math.nan
        out = []
        for f in self.findings:
            r = f.result
            out.append(FindingRow(
                id=f.id, run_id=self.run_id, iteration=f.cycle_tested, hypothesis=f.hypothesis, topic=f.topic,
                rationale=f.rationale, status=f.status, cycle_proposed=f.cycle_proposed,
                n_test=r.n_test if r else 0, n_control=r.n_control if r else 0,
                mean_test=r.mean_test if r else nan, mean_control=r.mean_control if r else nan,
                auc=r.auc if r else nan, auc_upper=r.auc_upper if r else nan, p_value=r.p_value if r else nan,
                note=r.note if r else "not tested yet", planted_topic=f.planted_topic))
        return out

    def save(self, root: Path, extra: dict[str, Any] | None = None) -> None:
        """Write findings.parquet, evidence.parquet and findings.json (atomically) under ``root``."""
        write_table(root / "findings.parquet", rows_to_table(FindingRow, self.rows()))
        write_table(root / "evidence.parquet", rows_to_table(EvidenceRow, self.evidence))
        doc = {"run_id": self.run_id, "cycles_done": self.cycles_done, "cycles_target": self.cycles_target,
               "counts": self.counts(),
               "findings": [_json_safe(asdict(r)) for r in self.rows()], "log": self.log, **(extra or {})}
        write_json(root / "findings.json", doc)

    @classmethod
    def load(cls, root: Path, run_id: str) -> KnowledgeBase:
        """The knowledge base of an earlier analysis in ``root``, continued under ``run_id``."""
        import pyarrow.parquet as pq

        doc_path = root / "findings.json"
        if not doc_path.is_file() or not (root / "evidence.parquet").is_file():
            raise ConfigError(f"continue_from={str(root)!r}: no findings.json / evidence.parquet there; pass "
                              "the output dir of an earlier analysis")
        doc = json.loads(doc_path.read_text())
        kb = cls(run_id=run_id, log=list(doc.get("log", [])), cycles_done=int(doc.get("cycles_done", 0)),
                 cycles_target=int(doc.get("cycles_target", 0)))
        kb.evidence = table_to_rows(EvidenceRow, pq.read_table(root / "evidence.parquet"))
        for r in table_to_rows(FindingRow, pq.read_table(root / "findings.parquet")):
            tested = r.n_test > 0 or r.n_control > 0
            result = TestResult(r.n_test, r.n_control, r.mean_test, r.mean_control, r.auc, r.auc_upper,
                                r.p_value, r.status, r.note) if tested else None
            kb.findings.append(Finding(id=r.id, hypothesis=r.hypothesis, topic=r.topic, rationale=r.rationale,
                                       cycle_proposed=r.cycle_proposed, cycle_tested=r.iteration, result=result,
                                       planted_topic=r.planted_topic))
        return kb


def _json_safe(d: dict) -> dict:
    """NaN -> None, so findings.json is strict JSON that any browser or tool reads."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}
