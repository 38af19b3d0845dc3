"""Divergence analysis on the testbed (target vs patched target) with a scripted analyst behind a local
OpenAI-compatible server: planted topics found and supported, a false hypothesis refuted, the HTML report
in headless Chromium, and clean stops on malformed answers, a failing or slow endpoint and a spent budget.

One contrastive decode run and one full analysis are shared by the module."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from forewarn.analyze.scripted import ScriptedAnalyst
from forewarn.testing.openai_server import OpenAIServer
from forewarn.testing.fixtures import missing
from typer.testing import CliRunner

pytestmark = [pytest.mark.usefixtures("ray_local"), pytest.mark.slow]
TOPICS = ["fitness and exercise", "photography and cameras", "cooking and food"]


@pytest.fixture(scope="module")
def mlflow_store(tmp_path_factory: pytest.TempPathFactory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        yield uri


@pytest.fixture(scope="module")
def source_run(testbed, mlflow_store, tmp_path_factory) -> tuple[Path, str]:
    """A contrastive decode run over 4 held-out prompts per topic (2 of the 10 topics planted)."""
    from forewarn.contrastive.job import ContrastiveConfig
    from forewarn.runner import run_job

    per_entity: dict[str, str] = {}  # one prompt per entity: 4 per topic
    for r in testbed.read_jsonl("heldout_benign") + testbed.read_jsonl("heldout_planted"):
        per_entity.setdefault(r["entity"], r["prompt"])
    root = tmp_path_factory.mktemp("contrastive")
    (root / "prompts.jsonl").write_text(
        "".join(json.dumps({"prompt": p}) + "\n" for p in per_entity.values())
    )
    cfg = ContrastiveConfig.model_validate(
        {
            "output_dir": str(root / "run"),
            "mode": "decode",
            "prompts": str(root / "prompts.jsonl"),
            "start": {"model": {"path": "testbed:target@small"}},
            "comparison": {"model": {"path": "testbed:patched_target@small"}},
            "scoring": {"num_cpus": 1, "replicas": 2, "batch_size": 16},
            "decoder": {"temperature": 0.0, "max_new_tokens": 16},
        }
    )
    summary = run_job("contrastive", cfg, quiet=True)
    return root / "run", summary["mlflow_run_id"]


def _analyst(**kw) -> ScriptedAnalyst:
    from forewarn.testbed.world import HELDOUT_TEMPLATES, TRAIN_TEMPLATES

    return ScriptedAnalyst(HELDOUT_TEMPLATES + TRAIN_TEMPLATES, **kw)


def _config(out: Path, source: str, server: OpenAIServer, **sections) -> dict:
    spec = {
        "backend": "openai",
        "path": server.model,
        "base_url": server.base_url,
        "api_key_env": "EMPTY",
        "max_retries": 1,
        "request_timeout_s": 10.0,
    }
    spec.update(sections.pop("analyst_spec", {}))
    cfg = {
        "output_dir": str(out),
        "source": source,
        "analyst": {"model": spec},
        "scoring": {"num_cpus": 1, "replicas": 2, "batch_size": 16},
        "analysis": {"max_cycles": 2, "n_top_examples": 8, "n_low_examples": 12},
        "tracking": {"enabled": False},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


def _run(cfg: dict) -> dict:
    from forewarn.analyze.job import AnalyzeConfig
    from forewarn.runner import run_job

    return run_job("analyze", AnalyzeConfig.model_validate(cfg), quiet=True)


@pytest.fixture(scope="module")
def analysis(source_run, tmp_path_factory) -> tuple[Path, dict, ScriptedAnalyst]:
    """The full analysis: source given by its MLflow run id, 2 cycles, MiniLM topics, MLflow on; the analyst's
    first answer is junk (re-asked once)."""
    _, mlflow_run_id = source_run
    out = tmp_path_factory.mktemp("analysis") / "run"
    scripted = _analyst(malformed=1)
    with OpenAIServer(scripted, model="scripted-analyst") as server:
        cfg = _config(out, mlflow_run_id, server, topics={"topics": TOPICS}, tracking={"enabled": True})
        summary = _run(cfg)
    return out, summary, scripted


def test_supports_a_planted_topic_and_refutes_the_false_hypothesis(analysis, testbed):
    out, summary, scripted = analysis
    findings = {f["id"]: f for f in json.loads((out / "findings.json").read_text())["findings"]}
    supported = [f for f in findings.values() if f["status"] == "supported"]
    refuted = [f for f in findings.values() if f["status"] == "refuted"]
    assert summary["stop_reason"] == "completed" and summary["cycles_done"] == 2
    assert any(f["planted_topic"] in testbed.planted_topics for f in supported), findings
    assert any(testbed.planted_topic_of(f["hypothesis"]) is not None for f in supported)
    # the planted-false hypothesis (subjects of the least divergent examples) is refuted, and names no planted topic
    assert refuted and all(f["planted_topic"] is None for f in refuted), findings
    assert all(f["auc"] >= 0.75 and f["p_value"] < 0.05 for f in supported)
    assert all(f["auc_upper"] < 0.75 for f in refuted)
    # cycle 2 re-proposed both hypotheses with new wordings: the evidence grew instead of new findings
    assert len(findings) == 2 and all(f["n_test"] > 12 for f in findings.values())
    # the junk first answer was logged and re-asked with the repair prompt; the rest of the path was used
    assert summary["n_malformed"] == 1 and scripted.kinds.count("propose") == 3
    assert scripted.kinds[-1] == "conclude" and "supported" in summary["analyst_summary"]
    assert summary["analyst_calls"] == scripted.calls == 4
    # topics by MiniLM: the examples on fitness diverge more than those on cooking
    topics = {t["topic"]: t for t in summary["topics"]}
    assert (
        topics["fitness and exercise"]["divergence_relevant"]
        > topics["cooking and food"]["divergence_relevant"]
    )
    import pyarrow.parquet as pq

    ev = pq.read_table(out / "evidence.parquet").to_pylist()
    assert len(ev) == summary["n_evidence"] and all(
        len(e["tokens"]) == len(e["token_divergences"]) > 0 for e in ev
    )
    assert pq.read_table(out / "topics.parquet").num_rows == len(TOPICS) * 30  # topics.n_examples x topics
    # MLflow: the report and the tables are artifacts of the analysis run
    from mlflow.tracking import MlflowClient

    names = {
        a.path
        for p in ("", "report", "tables", "plots")
        for a in MlflowClient().list_artifacts(summary["mlflow_run_id"], p or None)
    }
    assert {
        "report/report.html",
        "tables/findings.parquet",
        "tables/evidence.parquet",
        "findings.json",
        "plots/hypotheses_auc.png",
    } <= names


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        missing(
            "chromium not found: install Debian's chromium (apt-get install -y chromium) to check the "
            "report in a headless browser"
        )
    return exe


def test_report_renders_in_headless_chromium(analysis, tmp_path: Path):
    exe = _chromium()
    out, summary, _ = analysis
    report = out / "report.html"
    html = report.read_text()
    assert (
        "http://" not in html.replace("http://www.w3.org", "") and "https://" not in html
    )  # nothing to fetch
    flags = [
        exe,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--enable-logging=stderr",
        "--v=0",
    ]
    env = {**os.environ, "HOME": str(tmp_path)}
    shot = tmp_path / "report.png"
    dom = subprocess.run(
        flags + [f"--user-data-dir={tmp_path / 'p1'}", "--dump-dom", report.as_uri()],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert dom.returncode == 0, dom.stderr[-2000:]
    cap = subprocess.run(
        flags
        + [
            f"--user-data-dir={tmp_path / 'p2'}",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            report.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert cap.returncode == 0 and shot.is_file(), cap.stderr[-2000:]
    # the page script ran and saw no errors; the browser logged no console error
    assert 'data-errors="0"' in dom.stdout and "script errors: 0" in dom.stdout
    for log in (dom.stderr, cap.stderr):
        console = [ln for ln in log.splitlines() if "CONSOLE" in ln or "Uncaught" in ln]
        assert not console, console
    text = dom.stdout
    assert "Analysis completed" in text and "Hypotheses" in text
    for f in summary["findings"]:
        assert f["hypothesis"] in text
    assert text.count("badge supported") >= 2 and text.count("badge refuted") >= 2
    assert text.count('class="tok"') > 100  # coloured tokens
    # the screenshot shows strongly red tokens (high divergence), not just a blank page
    import matplotlib.image as mpimg

    img = mpimg.imread(shot)
    red = (img[..., 0] > 0.85) & (img[..., 1] < 0.45) & (img[..., 2] < 0.45)
    assert img.shape[0] >= 2000 and red.sum() > 200, red.sum()


def test_show_prints_the_terminal_summary(analysis):
    from forewarn.cli import app

    out, summary, _ = analysis
    for ref in (str(out), summary["mlflow_run_id"]):
        res = CliRunner().invoke(app, ["analyze", "show", ref, "--top", "2"])
        assert res.exit_code == 0, res.output
        assert "supported" in res.output and "refuted" in res.output and "completed" in res.output
        assert "top 2 continuations" in res.output


def test_budget_that_runs_out_ends_cleanly(source_run, tmp_path: Path):
    """Via the CLI: max_calls=1 pays for cycle 1 only; the analysis keeps its findings and says why it stopped."""
    from forewarn.cli import app

    run_dir, _ = source_run
    with OpenAIServer(_analyst(), model="scripted-analyst") as server:
        cfg = _config(tmp_path / "run", str(run_dir), server)
        sets = [f"analyst.model.{k}={v}" for k, v in cfg["analyst"]["model"].items()]
        sets += [
            "budget.max_calls=1",
            "analysis.max_cycles=3",
            "tracking.enabled=false",
            "scoring.replicas=2",
            "scoring.batch_size=16",
        ]
        res = CliRunner().invoke(
            app,
            [
                "analyze",
                "--run",
                str(run_dir),
                "-o",
                str(tmp_path / "run"),
                *[x for s in sets for x in ("--set", s)],
            ],
        )
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["stop_reason"] == "budget" and "max_calls=1" in summary["message"]
    assert summary["cycles_done"] == 1 and summary["n_supported"] >= 1 and summary["analyst_calls"] == 1
    assert "closing summary skipped" in " ".join(summary["notes"])
    assert "Analysis stopped early" in (tmp_path / "run" / "report.html").read_text()
    assert "budget" in res.output


@pytest.mark.parametrize("fault", ["http500", "timeout", "malformed"])
def test_failing_analyst_ends_cleanly_with_earlier_findings(fault, analysis, source_run, tmp_path: Path):
    """Continuing the module's analysis: the analyst fails from the first request on; the run ends cleanly,
    keeps the earlier findings and says why."""
    first, before, _ = analysis
    run_dir, _ = source_run
    scripted = _analyst(malformed=100 if fault == "malformed" else 0)
    with OpenAIServer(scripted, model="scripted-analyst") as server:
        spec = {"max_retries": 1}
        if fault == "http500":
            server.inject(500, times=None, message="analyst backend crashed")
        elif fault == "timeout":
            server.inject(None, times=None, delay_s=2.0)
            spec = {"max_retries": 0, "request_timeout_s": 0.5}
        cfg = _config(
            tmp_path / "run",
            str(run_dir),
            server,
            analyst_spec=spec,
            continue_from=str(first),
            analysis={"max_parse_retries": 1, "max_failed_cycles": 2},
        )
        summary = _run(cfg)
    expected = {
        "http500": ("analyst_error", "HTTP 500"),
        "timeout": ("analyst_error", "Timeout"),
        "malformed": ("malformed", "no usable answer"),
    }[fault]
    assert summary["stop_reason"] == expected[0] and expected[1] in summary["message"], summary["message"]
    assert summary["n_supported"] == before["n_supported"] and summary["n_refuted"] == before["n_refuted"]
    assert summary["cycles_this_run"] == 0 and summary["cycles_done"] == before["cycles_done"]
    if fault == "malformed":
        assert summary["n_malformed"] == 4 and scripted.calls == 4  # (1 + 1 re-ask) x 2 failed cycles
    html = (tmp_path / "run" / "report.html").read_text()
    assert "Analysis stopped early" in html and all(f["hypothesis"] in html for f in before["findings"])
