"""Cluster scale: the launcher YAMLs pass Ray's own validator offline, every example config validates and
plans onto cluster.yaml, and on a real local head that declares 4 GPUs it does not have (`ray start
--num-gpus=4`) `forewarn plan` and a short ReverseGen run place the roles as configured, checked through
Ray's state API, with the models on CPU; the run lands in MLflow with its tags."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import mlflow
import pytest
import yaml
from forewarn.cli import app
from forewarn.placement import cluster_yaml_nodes, validate_cluster_yaml
from forewarn.cluster_cli import config_job
from forewarn.errors import ConfigError
from forewarn.testing.ray_head import local_head
from typer.testing import CliRunner

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
# the small testbed world, one short iteration, proposer and target colocated on one (declared) GPU
SMALL = [
    "proposer.model.path=testbed:proposer@small",
    "target.model.path=testbed:target@small",
    "seeds=testbed:reversegen_seeds@small",
    "iterations=1",
    "propose.prompts_per_iteration=6",
    "propose.params.n=2",
    "propose.params.max_new_tokens=16",
    "respond.params.max_new_tokens=16",
    "dedup.semdedup=false",
    "proposer.model.device=cpu",
    "target.model.device=cpu",
    "proposer.resources.num_gpus=0.25",
    "target.resources.num_gpus=0.75",
    "target.resources.colocate_with=proposer",
    "judge.resources.num_gpus=1",
]


def _sets(items: list[str]) -> list[str]:
    return [a for s in items for a in ("--set", s)]


# ---------------------------------------------------------------- offline


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-gcp.yaml"])
def test_cluster_yaml_passes_rays_validator(name: str) -> None:
    prepared = validate_cluster_yaml(ROOT / name)
    types = prepared["available_node_types"]
    gpu_types = {t: v["resources"]["GPU"] for t, v in types.items() if v["resources"].get("GPU")}
    assert sorted(gpu_types.values()) == [4, 8]  # a 4-GPU and an 8-GPU worker type
    assert all(types[t]["min_workers"] == 0 and types[t]["max_workers"] >= 1 for t in gpu_types)  # autoscaled
    assert types[prepared["head_node_type"]]["resources"] == {"CPU": 0, "GPU": 0}
    raw = (ROOT / name).read_text()
    assert "forewarn[gpu]" in raw and "MLFLOW_TRACKING_URI" in raw and "/mnt/shared" in raw
    nodes = cluster_yaml_nodes(ROOT / name)
    assert sum(n.resources["GPU"] for n in nodes) == 4 * 4 + 2 * 8


def test_broken_cluster_yaml_is_rejected(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    del data["available_node_types"]["gpu_4x_a10g"]["resources"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match="'resources' is a required property"):
        validate_cluster_yaml(bad)
    result = CliRunner().invoke(app, ["cluster", "check", str(bad)])
    assert result.exit_code == 2
    ok = CliRunner().invoke(app, ["cluster", "check", str(ROOT / "cluster.yaml")])
    assert ok.exit_code == 0 and "gpu_8x_a100-1: GPU 8, CPU 96" in ok.output


def test_configs_cover_the_real_model_setups() -> None:
    names = {p.name for p in CONFIGS}
    assert {"reversegen-llama2-7b.yaml", "goodtriever-gpt2-large.yaml", "dpl-llama2-7b-lora.yaml"} <= names
    rg = yaml.safe_load((ROOT / "configs" / "reversegen-llama2-7b.yaml").read_text())
    assert rg["target"]["model"]["backend"] == "vllm" and rg["target"]["model"]["tensor_parallel_size"] == 2
    assert rg["judge"]["kind"] == "llama_guard" and "Llama-Guard-2" in rg["judge"]["model"]["path"]
    assert "open_llama_3b" in rg["proposer"]["model"]["path"]
    dpl = yaml.safe_load((ROOT / "configs" / "dpl-llama2-7b-lora.yaml").read_text())
    assert dpl["reward"]["lora"]["enabled"] and dpl["backbone"] == "meta-llama/Llama-2-7b-hf"


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_example_config_validates_and_plans_onto_cluster_yaml(path: Path) -> None:
    job = config_job(path)
    assert job, f"{path.name} has no '# forewarn-job: NAME' line"
    result = CliRunner().invoke(app, ["config", "validate", str(path), "--job", job])
    assert result.exit_code == 0, result.output
    assert f"valid {job} config" in result.output
    planned = CliRunner().invoke(
        app, ["plan", "--config", str(path), "--cluster", str(ROOT / "cluster.yaml"), "--json"]
    )
    assert planned.exit_code == 0, planned.output
    plan = json.loads(planned.output)
    assert plan["job"] == job and plan["roles"]
    assert all(r["nodes"] for r in plan["roles"])  # every role got a node


# ---------------------------------------------------------------- a real local head with declared GPUs


@pytest.fixture(scope="module")
def head():
    """`ray start --head --num-gpus=4` on a machine without GPUs: scheduling sees 4 GPUs, models stay on CPU.
    Yields (GCS address, dashboard URL, env with RAY_AUTH_MODE=token for clients of this token-auth head)."""
    with local_head(num_cpus=4, num_gpus=4) as h:
        yield h.address, h.dashboard, h.env


def _forewarn(args: list[str], env: dict, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "forewarn"), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.slow
def test_plan_against_the_live_head(head) -> None:
    gcs, _, env = head
    proc = subprocess.run(
        [str(BIN / "forewarn"), "plan", "--job", "reversegen", "--address", gcs, "--json", *_sets(SMALL)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = json.loads(proc.stdout)
    assert [(n["CPU"], n["GPU"]) for n in plan["nodes"]] == [(4.0, 4.0)]
    roles = {r["role"]: r for r in plan["roles"]}
    assert roles["proposer"]["per_replica"] == {"CPU": 1.0, "GPU": 0.25}
    assert roles["target"]["per_replica"] == {"CPU": 1.0, "GPU": 0.75}
    assert roles["proposer"]["group"] == roles["target"]["group"] == "proposer"
    assert roles["judge"]["group"] is None and roles["judge"]["per_replica"]["GPU"] == 1.0
    # whole-run pools (step 0) and colocation groups hold their resources while the DPO step (1) trains
    assert roles["target"]["step"] == roles["judge"]["step"] == roles["proposer"]["step"] == 0
    assert roles["dpo"]["step"] == 1
    assert plan["groups"] == [
        {
            "name": "proposer",
            "members": ["proposer", "target"],
            "bundles": [{"CPU": 2.0, "GPU": 1.0}],
            "nodes": plan["groups"][0]["nodes"],
        }
    ]
    # a node like the head cannot hold four whole-GPU targets next to a whole-GPU judge: exit 2, a clear reason
    too_big = CliRunner().invoke(
        app,
        [
            "plan",
            "--node",
            "CPU=4,GPU=4",
            "--set",
            "target.resources.replicas=4",
            "--set",
            "target.resources.num_gpus=1",
            "--set",
            "judge.resources.num_gpus=1",
        ],
    )
    assert too_big.exit_code == 2
    assert "cannot fit the roles held for the whole run (proposer, target, judge, embedder)" in too_big.output
    # CPU asks scaled to leave the DPO worker its CPU (as the run's pools do), GPUs never
    assert "They need GPU 5, CPU 3 at once; the cluster has GPU 4, CPU 4" in too_big.output
    assert "target.resources.replicas" in too_big.output and "judge.resources.replicas" in too_big.output


@pytest.fixture(scope="module")
def placed_run(head, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A short ReverseGen run as a driver on the head (what `ray job submit` does: RAY_ADDRESS is set)."""
    from forewarn.testbed import build_testbed

    build_testbed(size="small")  # cached after the first build; built here rather than inside the timed job
    gcs, _, env = head
    out = tmp_path_factory.mktemp("rg-placed") / "run"
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow-placed') / 'mlflow.db'}"
    proc = subprocess.run(
        [sys.executable, "jobs/reversegen.py", "--output-dir", str(out), *_sets(SMALL)],
        cwd=ROOT,
        env={**env, "RAY_ADDRESS": gcs, "MLFLOW_TRACKING_URI": uri},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (
        "group 'proposer'" in proc.stdout and "forewarn plan (reversegen)" in proc.stdout
    )  # its plan, first
    return out, uri


_STATE = """
import json, sys
from dataclasses import asdict
from ray.util.state import list_actors, list_placement_groups
kw = dict(address=sys.argv[1], detail=True, limit=1000, raise_on_missing_output=False)
print(json.dumps({"actors": [asdict(a) for a in list_actors(**kw)],
                  "groups": [asdict(g) for g in list_placement_groups(**kw)]}, default=str))
"""


@pytest.mark.slow
def test_run_places_roles_as_configured(head, placed_run) -> None:
    """Ray's state API (in a client process with RAY_AUTH_MODE=token) shows where the run's actors went."""
    _, dashboard, env = head
    proc = subprocess.run(
        [sys.executable, "-c", _STATE, dashboard], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = json.loads(proc.stdout.strip().splitlines()[-1])
    actors = [SimpleNamespace(**a) for a in state["actors"]]
    groups = [SimpleNamespace(**g) for g in state["groups"]]
    ours = [g for g in groups if g.name.startswith("forewarn-proposer-")]
    assert len(ours) == 1, [g.name for g in groups]
    pg = ours[0]
    assert [b["unit_resources"] for b in pg.bundles] == [{"CPU": 2.0, "GPU": 1.0}]
    assert pg.state == "REMOVED"  # released when the run ended

    def resources(a) -> dict:
        """CPU/GPU an actor asked for; inside a placement group Ray names them GPU_group_<pg id> etc."""
        out: dict[str, float] = {}
        for k, v in a.required_resources.items():
            base = k.split("_group_")[0]
            if base in ("CPU", "GPU"):
                out[base] = max(out.get(base, 0.0), v)
        return out

    # every role is a long-lived pool of RoleActors (forewarn.pools); pools of one run scale their CPU asks
    # by one common factor so that they and a DPO worker fit together, GPU asks are never scaled
    roles = [a for a in actors if "RoleActor" in a.class_name]
    by_gpu = {resources(a).get("GPU", 0.0): a for a in roles}
    assert {0.25, 0.75, 1.0} <= set(by_gpu), [(a.class_name, a.required_resources) for a in roles]
    proposer, target, judge = by_gpu[0.25], by_gpu[0.75], by_gpu[1.0]
    for a in (proposer, target):  # from the group's bundle
        assert all(pg.placement_group_id in k for k in a.required_resources), a.required_resources
    assert proposer.placement_group_id == target.placement_group_id == pg.placement_group_id
    assert 0 < resources(proposer)["CPU"] == resources(target)["CPU"] <= 1.0
    assert judge.placement_group_id is None  # not colocated: a whole GPU of its own


@pytest.mark.slow
def test_placed_run_is_tracked_with_its_tags(placed_run) -> None:
    out, uri = placed_run
    summary = json.loads((out / "summary.json").read_text())
    assert [m["iteration"] for m in summary["iterations"]] == [0]
    tags = mlflow.MlflowClient(tracking_uri=uri).get_run(summary["mlflow_run_id"]).data.tags
    assert tags["forewarn.job"] == "reversegen"
    assert len(tags["forewarn.config_hash"]) == 12
    commit = tags["forewarn.git_commit"]  # a commit of this repository, not the "unknown" fallback
    kind = subprocess.run(
        ["git", "cat-file", "-t", commit], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert kind.stdout.strip() == "commit", commit
    assert tags["forewarn.model.target"].endswith("target") and tags["forewarn.model.proposer"].endswith(
        "proposer"
    )
    assert tags["forewarn.testbed"].split("/")[1] == "small"
    compared = CliRunner().invoke(app, ["runs", "compare", "reversegen", "--tracking-uri", uri, "--json"])
    assert compared.exit_code == 0, compared.output
    (row,) = json.loads(compared.output)
    assert row["run_id"] == summary["mlflow_run_id"] and row["final_asr"] == pytest.approx(
        summary["final_asr"]
    )
