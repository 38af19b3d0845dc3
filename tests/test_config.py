"""Config resolution: precedence, typed --set parsing, and one-paragraph errors with exit code 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from forewarn.config import GenerationParams, load_config, parse_value
from forewarn.errors import ConfigError
from forewarn.pipeline.generate_job import GenerateConfig

ROOT = Path(__file__).resolve().parents[1]


def test_parse_value_types() -> None:
    assert parse_value("3") == 3 and parse_value("0.5") == 0.5
    assert parse_value("true") is True and parse_value("null") is None
    assert parse_value("[a, b]") == ["a", "b"] and parse_value("'7'") == "7"
    assert parse_value("hello world") == "hello world"


def test_precedence_defaults_yaml_set(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text("prompts: a.txt\nparams:\n  max_new_tokens: 12\n  temperature: 0.7\n")
    cfg = load_config(
        GenerateConfig,
        job="generate",
        path=f,
        overrides=["params.temperature=0.2", 'params.stop=["\\n", "."]'],
    )
    assert cfg.params.max_new_tokens == 12  # from the file
    assert cfg.params.temperature == 0.2  # --set beats the file
    assert cfg.params.stop == ["\n", "."]
    assert cfg.params.top_p == GenerationParams().top_p  # code default


@pytest.mark.parametrize(
    "yaml_text, expected",
    [
        ("prompts: a.txt\nparams:\n  max_new_tokenz: 3\n", "params.max_new_tokenz: unknown key"),
        ("prompts: a.txt\nparams:\n  max_new_tokens: many\n", 'params.max_new_tokens = "many"'),
        (
            "prompts: a.txt\nparams:\n  top_p: 1.5\n",
            "params.top_p = 1.5: Input should be less than or equal to 1",
        ),
        (
            "prompts: a.txt\ntarget:\n  model:\n    backend: tpu\n    path: x\n",
            'target.model.backend = "tpu"',
        ),
    ],
)
def test_errors_name_field_and_value(tmp_path: Path, yaml_text: str, expected: str) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(yaml_text)
    with pytest.raises(ConfigError) as e:
        load_config(GenerateConfig, job="generate", path=f)
    assert expected in str(e.value)


def test_bad_yaml_and_missing_file(tmp_path: Path) -> None:
    f = tmp_path / "broken.yaml"
    f.write_text("params: [1, 2\n  top_p: 3\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+"):
        load_config(GenerateConfig, path=f)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(GenerateConfig, path=tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(GenerateConfig, overrides=["params.top_p"])


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


@pytest.mark.parametrize("entry", [["jobs/generate.py"], ["-m", "forewarn.cli", "generate"]])
def test_cli_and_job_exit_2_without_traceback(tmp_path: Path, entry: list[str]) -> None:
    cases = {
        "unknown key": ("prompts: a.txt\nbogus: 1\n", "bogus: unknown key"),
        "wrong type": ("prompts: a.txt\nseed: abc\n", 'seed = "abc"'),
        "bad yaml": ("prompts: [a\n", "not valid YAML"),
    }
    for name, (text, needle) in cases.items():
        f = tmp_path / f"{name.replace(' ', '_')}.yaml"
        f.write_text(text)
        out = _run(*entry, "--config", str(f))
        assert out.returncode == 2, (name, out.stdout, out.stderr)
        assert needle in out.stderr, (name, out.stderr)
        assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    out = _run(*entry, "--config", str(tmp_path / "missing.yaml"))
    assert out.returncode == 2 and "does not exist" in out.stderr


def test_platform_stdlib_not_shadowed() -> None:
    out = _run("-c", "import platform, forewarn; print(platform.system())")
    assert out.returncode == 0 and out.stdout.strip() == "Linux", out.stderr
