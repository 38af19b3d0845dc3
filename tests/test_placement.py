"""Placement: role resources -> Ray requests, colocation groups and the plan's packing and error messages.

Pure logic on real job configs (no Ray needed); the live placement on a head that declares GPUs is in
test_cluster.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from forewarn.config import Resources
from forewarn.errors import ConfigError
from forewarn.placement import (
    JobLayout,
    Node,
    PlacementError,
    Plan,
    cluster_yaml_nodes,
    colocation_groups,
    parse_nodes,
    remote_args,
    role_demands,
    steps,
)
from forewarn.placement import plan as plan_layout
from forewarn.runner import job_module, resolve

ROOT = Path(__file__).resolve().parents[1]
COLOCATED = [
    "target.resources.colocate_with=proposer",
    "proposer.resources.num_gpus=0.25",
    "target.resources.num_gpus=0.75",
]


def rg(*sets: str):
    return resolve("reversegen", None, list(sets))


def plan(cfg: Any, nodes: list[Node], job: str) -> Plan:
    """The plan with the job's own layout, as `forewarn plan` and the runner make it."""
    return plan_layout(cfg, nodes, job, job_module(job).PLACEMENT)


def demands_of(cfg) -> dict:
    return {d.name: d for d in role_demands(cfg)[0]}


def test_roles_of_a_job_config_are_found_by_walking_it() -> None:
    d = demands_of(rg())
    assert list(d) == ["proposer", "target", "judge", "embedder", "dpo"]  # warmup/enhance are disabled
    assert d["target"].model == "testbed:target" and d["judge"].model == "(offline_toxicity)"
    assert d["dpo"].kind == "train" and d["dpo"].per_replica == {"CPU": 1.0, "GPU": 0.0}
    with_warmup = demands_of(rg("warmup.enabled=true", "dpo.num_workers=4", "dpo.use_gpu=true"))
    assert "warmup.train" in with_warmup
    assert with_warmup["dpo"].replicas == 4 and with_warmup["dpo"].per_replica["GPU"] == 1.0
    # the train job: only the section its `task` names asks for workers
    train = {d.name for d in role_demands(resolve("train", None, ["task=reward"]))[0]}
    assert train == {"reward"}


def test_vllm_replicas_take_tensor_parallel_gpus_on_one_node() -> None:
    cfg = rg("target.model.backend=vllm", "target.model.tensor_parallel_size=4")
    t = demands_of(cfg)["target"]
    assert t.kind == "vllm" and t.per_replica == {"CPU": 4.0, "GPU": 4.0} and t.tensor_parallel == 4
    with pytest.raises(
        PlacementError, match=r"target.resources.num_gpus=2 with target.model.tensor_parallel_size=4"
    ):
        role_demands(
            rg(
                "target.model.backend=vllm",
                "target.model.tensor_parallel_size=4",
                "target.resources.num_gpus=2",
            )
        )
    p = plan(cfg, parse_nodes(["2xCPU=48,GPU=4"]), "reversegen")
    assert p.placements["target"] == ["node0"] or p.placements["target"] == ["node1"]
    with pytest.raises(
        PlacementError,
        match=r"target replica 1/1 needs GPU 8, CPU 8 on one node, but the largest "
        r"node \(node0\) has GPU 4, CPU 48",
    ):
        plan(
            rg("target.model.backend=vllm", "target.model.tensor_parallel_size=8"),
            parse_nodes(["2xCPU=48,GPU=4"]),
            "reversegen",
        )


def test_a_vllm_role_on_cpu_asks_for_no_gpu() -> None:
    t = demands_of(rg("target.model.backend=vllm", "target.model.device=cpu", "target.resources.num_cpus=2"))[
        "target"
    ]
    assert t.kind == "vllm" and t.per_replica == {"CPU": 2.0, "GPU": 0.0}
    assert plan(
        rg("target.model.backend=vllm", "target.model.device=cpu"), parse_nodes(["CPU=8"]), "reversegen"
    )


def test_hf_settings_that_do_nothing_are_flagged() -> None:
    _, warnings = role_demands(rg("target.model.tensor_parallel_size=2", "proposer.resources.num_gpus=2"))
    assert any("target.model.tensor_parallel_size=2 is a vllm setting" in w for w in warnings)
    assert any("proposer.resources.num_gpus=2 but proposer.model.device_map is unset" in w for w in warnings)


def test_colocation_group_bundles_share_gpus() -> None:
    cfg = rg(*COLOCATED, "proposer.resources.replicas=2", "target.resources.replicas=2")
    (g,) = colocation_groups(role_demands(cfg)[0])
    assert g.name == "proposer" and g.members == ("proposer", "target")
    assert g.bundles == ({"CPU": 2.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 1.0})  # one GPU per replica pair
    p = plan(cfg, parse_nodes(["CPU=8,GPU=2"]), "reversegen")
    assert p.placements["proposer"] == p.placements["target"] == ["node0", "node0"]
    assert p.free["node0"]["GPU"] == 0.0
    # a judge colocated with the target joins the proposer's group (followed to its root)
    three = rg(
        *COLOCATED,
        "target.resources.num_gpus=0.5",
        "judge.resources.colocate_with=target",
        "judge.resources.num_gpus=0.25",
    )
    (g3,) = colocation_groups(role_demands(three)[0])
    assert g3.members == ("proposer", "target", "judge") and g3.bundles == ({"CPU": 3.0, "GPU": 1.0},)


def test_bad_colocations_say_what_to_change() -> None:
    with pytest.raises(
        PlacementError,
        match=r"ask for 2 GPUs per replica \(proposer.resources.num_gpus=1, "
        r"target.resources.num_gpus=1\) but share a bundle of 1 GPU",
    ):
        colocation_groups(
            role_demands(
                rg(
                    "target.resources.colocate_with=proposer",
                    "proposer.resources.num_gpus=1",
                    "target.resources.num_gpus=1",
                )
            )[0]
        )
    with pytest.raises(
        PlacementError,
        match=r"target.resources.colocate_with = 'proposr': not another role of "
        r"this job; roles: embedder, judge, proposer, target$",
    ):
        colocation_groups(role_demands(rg("target.resources.colocate_with=proposr"))[0])
    with pytest.raises(PlacementError, match="colocate_with forms a cycle"):
        colocation_groups(
            role_demands(
                rg("target.resources.colocate_with=proposer", "proposer.resources.colocate_with=target")
            )[0]
        )
    with pytest.raises(
        PlacementError, match=r"target \(backend vllm\) cannot join colocation group 'proposer'"
    ):
        colocation_groups(role_demands(rg(*COLOCATED, "target.model.backend=vllm"))[0])
    assert issubclass(PlacementError, ConfigError)  # the CLI and job files exit 2 with the message


def test_steps_follow_how_the_job_runs() -> None:
    d = role_demands(rg())[0]
    # ReverseGen holds every inference role as a whole-run pool: only its training sections are steps
    assert steps(d, job_module("reversegen").PLACEMENT) == [["dpo"]]
    assert steps(d, None) == [["proposer", "target", "judge", "embedder"], ["dpo"]]  # no layout: all at once
    assert steps(d, JobLayout(steps=(("proposer",), ("target", "judge")))) == [
        ["proposer"],
        ["target", "judge"],
        ["embedder"],
        ["dpo"],
    ]  # unnamed roles alone, then training
    gt = role_demands(resolve("goodtriever"))[0]
    assert steps(gt, job_module("goodtriever").PLACEMENT)[:2] == [
        ["datastores.toxic", "datastores.nontoxic"],
        ["target", "judge", "perplexity"],
    ]
    skipped = plan_layout(
        resolve("contrastive"), parse_nodes(["CPU=8"]), "contrastive", job_module("contrastive").PLACEMENT
    )
    assert any(w.startswith("start: not placed (loaded inside the scoring actors)") for w in skipped.warnings)


def test_plan_fails_with_the_roles_the_numbers_and_the_fix() -> None:
    cfg = rg("target.resources.num_gpus=1", "target.resources.replicas=3", "judge.resources.num_gpus=1")
    assert plan(cfg, parse_nodes(["CPU=16,GPU=4"]), "reversegen").placements["target"] == ["node0"] * 3
    with pytest.raises(PlacementError) as e:
        plan(cfg, parse_nodes(["CPU=16,GPU=3"]), "reversegen")
    msg = str(e.value)
    assert "cannot fit the roles held for the whole run (proposer, target, judge, embedder)" in msg
    assert "They need GPU 4, CPU 6 at once; the cluster has GPU 3, CPU 16" in msg
    assert "judge.resources.replicas" in msg
    # a job without whole-run pools places its steps one after another (Goodtriever: stores, then generation)
    gt = resolve("goodtriever", None, ["target.resources.num_gpus=1", "judge.resources.num_gpus=1"])
    with pytest.raises(PlacementError, match=r"cannot fit the roles that run together \(target, judge"):
        plan(gt, parse_nodes(["CPU=16,GPU=1"]), "goodtriever")


def test_dpo_trains_beside_the_whole_run_pools() -> None:
    """Issue 18: ReverseGen's pools stay up during its DPO steps, so the plan reserves their GPUs while
    training (it used to count each role alone in its step, and a cluster one GPU short passed)."""
    gpu = ("proposer.resources.num_gpus=1", "target.resources.num_gpus=1", "judge.resources.num_gpus=1")
    cfg = rg(*gpu, "dpo.use_gpu=true")
    with pytest.raises(PlacementError, match=r"training section 'dpo'.*free when it failed: node0: GPU 0"):
        plan(cfg, parse_nodes(["CPU=16,GPU=3"]), "reversegen")
    ok = plan(cfg, parse_nodes(["CPU=16,GPU=4"]), "reversegen")
    assert ok.step_of["proposer"] == ok.step_of["target"] == 0 and ok.step_of["dpo"] == 1
    assert ok.free["node0"]["GPU"] == 0.0 and "run" in ok.render()
    # on a 2-CPU laptop the pools' CPU asks shrink to leave the DPO worker its CPU, as RolePools does
    small = plan(rg("dpo.cpus_per_worker=0.5"), parse_nodes(["CPU=2"]), "reversegen")
    assert any("ask Ray for 0.38 of their num_cpus" in w for w in small.warnings), small.warnings


def test_colocation_groups_stay_reserved_while_training() -> None:
    cfg = rg(*COLOCATED, "dpo.num_workers=4", "dpo.use_gpu=true")
    with pytest.raises(PlacementError, match=r"training section 'dpo'.*dpo.num_workers"):
        plan(cfg, parse_nodes(["CPU=16,GPU=4"]), "reversegen")  # 1 GPU held by the group, 3 left
    ok = plan(
        rg(*COLOCATED, "dpo.num_workers=3", "dpo.use_gpu=true"), parse_nodes(["CPU=16,GPU=4"]), "reversegen"
    )
    assert ok.placements["dpo"] == ["node0"] * 3


def test_plan_spreads_over_cluster_yaml_nodes_and_renders() -> None:
    nodes = cluster_yaml_nodes(ROOT / "cluster.yaml")
    cfg = resolve("reversegen", str(ROOT / "configs" / "reversegen-llama2-7b-colocated.yaml"))
    p = plan(cfg, nodes, "reversegen")
    assert len(p.placements["proposer"]) == 4 and p.placements["proposer"] == p.placements["target"]
    assert len(set(p.placements["group:proposer"])) == 1  # 4 one-GPU bundles packed on one 4/8-GPU node
    text = p.render()
    assert "group 'proposer'" in text and "gpu_8x_a100-0" in text
    as_dict = p.to_dict()
    assert {r["role"] for r in as_dict["roles"]} == {"proposer", "target", "judge", "embedder", "dpo"}


def test_parse_nodes_and_remote_args_without_a_group() -> None:
    assert [n.resources for n in parse_nodes(["2xCPU=8,GPU=1", "CPU=4"])] == [
        {"CPU": 8.0, "GPU": 1.0},
        {"CPU": 8.0, "GPU": 1.0},
        {"CPU": 4.0},
    ]
    with pytest.raises(ConfigError, match="expected \\[Nx\\]CPU=<n>,GPU=<n>"):
        parse_nodes(["TPU=4"])
    assert remote_args(Resources()) == {}  # roles outside a colocation group keep Ray's default scheduling
    assert (
        "placement_group" not in Resources(placement_group="pg").model_dump()
    )  # run-time only, never hashed
