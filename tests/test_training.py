"""The training runner end to end on tiny models: DPO under ZeRO 0 / 2 / 3 on 2 CPU workers, kill-and-resume,
SFT with LoRA. Ray Train runs are few on purpose (each costs tens of seconds): every run feeds several checks.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest
import torch
from forewarn.config import GenerationParams, ModelSpec, TrackingConfig
from forewarn.models.hf import HFGenerator
from forewarn.models.tiny import build_tiny_model, train_tokenizer
from forewarn.tracking import NullTracker, make_tracker
from forewarn.training.api import ReferenceScorer, compute_reference_logps, train_dpo, train_sft
from forewarn.training.config import DPOConfig, TrainConfig
from forewarn.training.trainer import lr_factor, read_metrics
from mlflow.tracking import MlflowClient

ANIMALS = ["cat", "dog", "cow", "owl", "fox", "bee", "ant", "elk"]


def toy_pairs(n: int, seed: int) -> list[dict]:
    """Prompts about an animal; the chosen answer is kind, the rejected one rude (a learnable preference)."""
    r = random.Random(seed)
    rows = []
    for _ in range(n):
        a = r.choice(ANIMALS)
        rows.append(
            {
                "prompt": f"Tell me about the {a} number {r.randint(0, 99)}.",
                "chosen": f"The {a} is kind and calm.",
                "rejected": f"The {a} is rude and loud.",
            }
        )
    return rows


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    """A policy and a different reference (so step-1 DPO losses are not trivially log 2)."""
    root = tmp_path_factory.mktemp("models")
    corpus = [f"{p['prompt']} {p['chosen']} {p['rejected']}" for p in toy_pairs(200, 5)]
    tok = train_tokenizer(corpus, vocab_size=400)
    return {
        "policy": build_tiny_model(root / "policy", tokenizer=tok, seed=0),
        "reference": build_tiny_model(root / "reference", tokenizer=tok, seed=1),
    }


@pytest.fixture(scope="module")
def dpo_data(ray_local, models) -> dict[str, pa.Table]:
    """Pairs with reference log-probs from ONE Ray Data pass; train_dpo passes such columns through."""
    cfg = dpo_config(0)
    train = compute_reference_logps(pa.Table.from_pylist(toy_pairs(128, 1)), models["reference"], cfg)
    evals = compute_reference_logps(pa.Table.from_pylist(toy_pairs(32, 2)), models["reference"], cfg)
    return {"train": train, "eval": evals}


def dpo_config(stage: int, **kw) -> DPOConfig:
    base = dict(
        num_workers=2,
        lr=3e-3,
        micro_batch_size=4,
        max_steps=12,
        epochs=3,
        beta=0.1,
        max_length=64,
        max_prompt_length=32,
        deepspeed={"zero_stage": stage},
    )
    return DPOConfig(**{**base, **kw})


def step_losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in read_metrics(out / "metrics.jsonl") if "loss" in r}


def eval_rows(out: Path) -> list[dict]:
    return [r for r in read_metrics(out / "metrics.jsonl") if "eval/loss" in r]


def final_deepspeed_dir(out: Path, name: str) -> Path:
    """The DeepSpeed part of the last Ray Train checkpoint of a run (what training left in the engine)."""
    return max((out / "ray" / name).glob("checkpoint_0*")) / "deepspeed"  # checkpoint_NNNNNNN folders


def hf_weights(model_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return {
        k: v.detach().float() for k, v in AutoModelForCausalLM.from_pretrained(model_dir).state_dict().items()
    }


@pytest.fixture(scope="module")
def zero_runs(tmp_path_factory, models, dpo_data) -> dict[int, Path]:
    runs = {}
    for stage in (0, 3):
        out = tmp_path_factory.mktemp(f"dpo-zero{stage}")
        train_dpo(
            dpo_config(stage),
            dpo_data["train"],
            models["reference"],
            out,
            NullTracker(),
            policy_model_path=models["policy"],
            eval_pairs=dpo_data["eval"],
        )
        runs[stage] = out
    return runs


@pytest.mark.slow
def test_dpo_raises_margin_and_accuracy(zero_runs) -> None:
    evals = eval_rows(zero_runs[0])
    first, last = evals[0], evals[-1]
    assert first["step"] == 0 and last["step"] == 12
    assert last["eval/logps/margin"] > first["eval/logps/margin"] + 5.0
    assert last["eval/rewards/accuracy"] >= 0.9
    assert last["eval/rewards/margin"] > 0
    assert step_losses(zero_runs[0])[12] < step_losses(zero_runs[0])[1]


@pytest.mark.slow
def test_zero0_and_zero3_match(zero_runs) -> None:
    l0, l3 = step_losses(zero_runs[0]), step_losses(zero_runs[3])
    assert abs(l0[1] - 0.6931) > 1e-3  # policy != reference: the check is not trivially log 2
    assert l3[1] == pytest.approx(l0[1], abs=1e-5)
    for step in (2, 3):  # after real optimizer steps through the sharded optimizer
        assert l3[step] == pytest.approx(l0[step], rel=1e-3)


@pytest.mark.slow
def test_checkpoint_is_a_hf_folder(zero_runs) -> None:
    model_dir = zero_runs[3] / "model"
    assert (model_dir / "config.json").is_file() and (model_dir / "tokenizer.json").is_file()
    gen = HFGenerator(ModelSpec(path=str(model_dir), device="cpu"))
    out = gen.generate(["Tell me about the owl number 7."], GenerationParams(max_new_tokens=8))
    assert out[0][0].token_ids


@pytest.mark.slow
def test_zero3_export_equals_the_trained_weights(zero_runs, models) -> None:
    """The HF folder exported under ZeRO-3 (parameters gathered from both ranks' partitions) holds the weights
    DeepSpeed trained: the fp32 partitions of the final checkpoint, consolidated on their own by DeepSpeed's
    zero_to_fp32, and the ZeRO-0 run's export; not the starting policy."""
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    trained = get_fp32_state_dict_from_zero_checkpoint(
        str(final_deepspeed_dir(zero_runs[3], "dpo")), tag="state"
    )
    exported, start = hf_weights(zero_runs[3] / "model"), hf_weights(models["policy"])
    zero0 = hf_weights(zero_runs[0] / "model")
    assert trained and set(trained) <= set(exported)
    for name, w in trained.items():
        assert torch.allclose(exported[name], w.float(), rtol=0, atol=1e-6), name
    moved = max(float((exported[k] - start[k]).abs().max()) for k in trained)
    assert moved > 1e-3, "the export holds the untrained policy"
    off_zero0 = max(float((exported[k] - zero0[k]).abs().max()) for k in exported)
    assert off_zero0 < 0.05 * moved, (off_zero0, moved)


KILLED_RUN = textwrap.dedent("""
    import sys, pyarrow.parquet as pq, ray
    from forewarn.tracking import NullTracker
    from forewarn.training.api import train_dpo
    from forewarn.training.config import DPOConfig
    ray.init(address=sys.argv[1])
    cfg = DPOConfig.model_validate_json(open(sys.argv[2]).read())
    train_dpo(cfg, pq.read_table(sys.argv[3]), sys.argv[4], sys.argv[5], NullTracker(),
              policy_model_path=sys.argv[6])
""")


@pytest.mark.slow
def test_kill_after_checkpoint_then_resume_zero2(tmp_path, ray_local, models, dpo_data, zero_runs) -> None:
    """A ZeRO-2 run is SIGKILLed after its first checkpoint; the rerun resumes from that checkpoint."""
    import pyarrow.parquet as pq

    cfg = dpo_config(2, max_steps=24, checkpoint_every=4)
    out = tmp_path / "dpo-zero2"
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    pq.write_table(dpo_data["train"], tmp_path / "train.parquet")
    (tmp_path / "run.py").write_text(KILLED_RUN)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                str(tmp_path / "run.py"),
                ray_local,
                str(tmp_path / "cfg.json"),
                str(tmp_path / "train.parquet"),
                str(models["reference"]),
                str(out),
                str(models["policy"]),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:
            if (
                out / "ray" / "dpo" / "checkpoint_manager_snapshot.json"
            ).is_file():  # a registered checkpoint
                break
            time.sleep(0.5)
        assert proc.poll() is None, (
            f"the run ended before it could be killed:\n{(tmp_path / 'killed.log').read_text()}"
        )
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    first = step_losses(out)
    assert 4 <= max(first) < 24, "killed after the first checkpoint, before the end"
    # ZeRO-2 gives the ZeRO-0 losses too
    assert first[1] == pytest.approx(step_losses(zero_runs[0])[1], abs=1e-5)
    assert first[2] == pytest.approx(step_losses(zero_runs[0])[2], rel=1e-3)

    train_dpo(
        cfg, dpo_data["train"], models["reference"], out, NullTracker(), policy_model_path=models["policy"]
    )
    rows = read_metrics(out / "metrics.jsonl")
    starts = [i for i, r in enumerate(rows) if r.get("event") == "start"]
    assert len(starts) == 2 and rows[starts[0]]["resumed_from_step"] == 0
    resumed = int(rows[starts[1]]["resumed_from_step"])
    assert resumed >= 4 and resumed % 4 == 0
    after = [r["step"] for r in rows[starts[1] :] if "loss" in r]
    assert after[0] == resumed + 1 and after[-1] == 24  # continued from the checkpoint, not from step 1
    # the resumed run's first step repeats the killed run's step exactly (same weights, optimizer, data)
    killed = {r["step"]: r["loss"] for r in rows[: starts[1]] if "loss" in r}
    if resumed + 1 in killed:
        first_resumed = next(r for r in rows[starts[1] :] if "loss" in r)
        assert first_resumed["loss"] == pytest.approx(killed[resumed + 1], rel=1e-4)
    assert (out / "model" / "config.json").is_file()


PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def test_reference_logps_need_only_a_training_workers_cpus(ray_local, models) -> None:
    """The reference pass runs beside a job's role pools, in the CPUs held for its training step. On a
    2-CPU Ray with 1.5 CPUs held by another actor (a ReverseGen run's pools), a 0.5-CPU reference pass must
    finish: the Ray Data version waited forever on a 1-CPU metadata task. Its values are the in-process
    scorer's, in row order."""
    import ray

    holder = ray.remote(num_cpus=1.5)(type("Held", (), {"ping": lambda self: 1})).remote()
    ray.get(holder.ping.remote())
    try:
        cfg = dpo_config(0, cpus_per_worker=0.5)
        pairs = pa.Table.from_pylist(toy_pairs(6, 7))
        done: dict = {}
        worker = threading.Thread(
            target=lambda: done.update(t=compute_reference_logps(pairs, models["reference"], cfg)),
            daemon=True,
        )
        worker.start()
        worker.join(timeout=180)
        assert "t" in done, "the reference pass did not finish within 180 s beside a 1.5-CPU actor"
    finally:
        ray.kill(holder)
    local = ReferenceScorer(str(models["reference"]), cfg).score(
        pairs.column("prompt").to_pylist(),
        pairs.column("chosen").to_pylist(),
        pairs.column("rejected").to_pylist(),
    )
    table = done["t"]
    assert table.column("prompt").to_pylist() == pairs.column("prompt").to_pylist()
    got = list(
        zip(table.column("ref_chosen_logps").to_pylist(), table.column("ref_rejected_logps").to_pylist())
    )
    assert [x for p in got for x in p] == pytest.approx([x for p in local for x in p], rel=1e-6)


def test_lr_schedule() -> None:
    cfg = TrainConfig(warmup_steps=3, schedule="cosine", min_lr_ratio=0.1)
    assert [lr_factor(s, cfg, 13) for s in range(3)] == pytest.approx([0.25, 0.5, 0.75])
    assert lr_factor(3, cfg, 13) == pytest.approx(1.0) and lr_factor(13, cfg, 13) == pytest.approx(0.1)
    assert lr_factor(8, cfg, 13) == pytest.approx(0.55)  # half-way down the cosine
    assert lr_factor(50, TrainConfig(), 13) == 1.0


@pytest.mark.slow
def test_sft_with_lora_lowers_heldout_loss(tmp_path, ray_local, models) -> None:
    rows = [{"prompt": p["prompt"], "target": p["chosen"]} for p in toy_pairs(128, 3)]
    held = [{"prompt": p["prompt"], "target": p["chosen"]} for p in toy_pairs(32, 4)]
    cfg = TrainConfig(
        num_workers=2,
        lr=1e-2,
        micro_batch_size=8,
        max_steps=12,
        epochs=2,
        max_length=64,
        max_prompt_length=32,
        deepspeed={"zero_stage": 2},
        lora={"enabled": True, "r": 8, "alpha": 16, "target_modules": PROJECTIONS},
    )
    tracking = TrackingConfig(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db", experiment="test-sft")
    with make_tracker(tracking, "train") as tracker:
        model_dir = train_sft(cfg, rows, tmp_path, tracker, model_path=models["policy"], eval_pairs=held)
    # rank 0 logged every step to the job's MLflow run
    history = MlflowClient(tracker.tracking_uri).get_metric_history(tracker.run_id, "sft/loss")
    assert [m.step for m in history] == list(range(1, 13))
    evals = eval_rows(tmp_path)
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 12
    assert evals[-1]["eval/loss"] < 0.8 * evals[0]["eval/loss"]
    # merged: a plain HF folder with no adapter files, loadable by the hf backend
    assert not (model_dir / "adapter_config.json").exists()
    # ... whose weights are the base plus the trained adapters, W + (alpha / r) B A, computed here from the
    # final DeepSpeed state (ZeRO-2: the whole module on rank 0) rather than by peft's merge
    ds_state = final_deepspeed_dir(tmp_path, "sft") / "state" / "mp_rank_00_model_states.pt"
    adapters = torch.load(ds_state, map_location="cpu", weights_only=False)["module"]
    base, merged = hf_weights(models["policy"]), hf_weights(model_dir)
    trained = 0
    for name, w in base.items():
        stem = f"base_model.model.{name.removesuffix('.weight')}"
        if f"{stem}.lora_A.default.weight" not in adapters:
            assert torch.equal(merged[name], w), f"{name} is not a LoRA target but changed"
            continue
        a, b = (
            adapters[f"{stem}.lora_A.default.weight"].float(),
            adapters[f"{stem}.lora_B.default.weight"].float(),
        )
        assert torch.allclose(merged[name], w + (16 / 8) * (b @ a), rtol=0, atol=1e-5), name
        trained += int(float(b.abs().max()) > 0)  # B starts at zero: non-zero means the adapter learned
    assert trained == sum(k.endswith("lora_B.default.weight") for k in adapters) > 0
    gen = HFGenerator(ModelSpec(path=str(model_dir), device="cpu"))
    assert gen.generate(["Tell me about the cat number 3."], GenerationParams(max_new_tokens=6))[0][
        0
    ].token_ids
