"""The vllm backend at its API boundary (vLLM cannot be installed on CPU machines).

Checks for real: the clear error where vLLM is missing, the pure mappings to vLLM's engine and
SamplingParams kwargs, the conversion of vLLM outputs, the ``ray.data.llm`` processor built from a
role (stages, engine kwargs, GPUs per replica), and Ray's own chat-template and tokenize stages run on
CPU over our preprocessed rows. Only the engine stage itself needs a GPU and vLLM.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest

from forewarn.config import GenerationParams, ModelSpec, Resources, RoleConfig
from forewarn.errors import BackendUnavailable, ConfigError
from forewarn.models import load_generator
from forewarn.models import vllm as fv

HAVE_VLLM = importlib.util.find_spec("vllm") is not None
needs_no_vllm = pytest.mark.skipif(HAVE_VLLM, reason="vllm is installed here")


# ------------------------------------------------------------------ missing vLLM


@needs_no_vllm
def test_missing_vllm_is_a_clear_error(ray_local: None) -> None:
    import ray

    spec = ModelSpec(backend="vllm", path="meta-llama/Llama-2-7b-chat-hf")
    for call in (fv.import_vllm, lambda: load_generator(spec), lambda: fv.to_sampling_params(GenerationParams()),
                 lambda: fv.vllm_generate_stage(ray.data.from_items([{"prompt": "x"}]), RoleConfig(model=spec),
                                                GenerationParams())):
        with pytest.raises(BackendUnavailable) as err:
            call()
        msg = str(err.value)
        assert "model.backend='vllm'" in msg and "pip install 'forewarn[gpu]' on a CUDA machine" in msg


# ------------------------------------------------------------------ pure mappings


def test_engine_kwargs_from_spec() -> None:
    spec = ModelSpec(backend="vllm", path="m", tensor_parallel_size=4, gpu_memory_utilization=0.6,
                     max_model_len=4096, dtype="bfloat16", trust_remote_code=True)
    assert fv.engine_kwargs(spec) == dict(tensor_parallel_size=4, gpu_memory_utilization=0.6, dtype="bfloat16",
                                          trust_remote_code=True, max_model_len=4096)
    assert "max_model_len" not in fv.engine_kwargs(ModelSpec(backend="vllm", path="m"))


def test_sampling_kwargs_from_generation_params() -> None:
    params = GenerationParams(n=3, temperature=0.8, top_p=0.95, top_k=40, seed=11, stop=["\n\n"],
                              max_new_tokens=32, logprobs=True, presence_penalty=0.2,
                              frequency_penalty=0.1, repetition_penalty=1.2)
    assert fv.sampling_kwargs(params) == dict(n=3, temperature=0.8, top_p=0.95, top_k=40, seed=11,
                                              stop=["\n\n"], max_tokens=32, logprobs=0, presence_penalty=0.2,
                                              frequency_penalty=0.1, repetition_penalty=1.2)
    greedy = fv.sampling_kwargs(GenerationParams(), n=1, seed=5)
    assert greedy["temperature"] == 0.0 and greedy["top_k"] == -1 and greedy["logprobs"] is None
    assert greedy["n"] == 1 and greedy["seed"] == 5


@dataclass
class Logprob:  # the shape of vllm.sequence.Logprob
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:  # the shape of vllm.outputs.CompletionOutput
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None = None
    logprobs: list[dict[int, Logprob]] | None = None
    finish_reason: str | None = None


@dataclass
class RequestOutput:  # the shape of vllm.outputs.RequestOutput
    outputs: list[CompletionOutput] = field(default_factory=list)


def test_completions_from_vllm_outputs() -> None:
    out = RequestOutput([
        CompletionOutput(0, "hello", [5, 6], logprobs=[{5: Logprob(-0.1), 9: Logprob(-2.0)}, {6: Logprob(-0.3)}],
                         finish_reason="length"),
        CompletionOutput(1, "hi", [7], finish_reason="stop"),
        CompletionOutput(2, "", [], finish_reason="abort"),
    ])
    a, b, c = fv.completions_from_output(out)
    assert (a.text, a.token_ids, a.finish_reason, a.logprobs) == ("hello", [5, 6], "length", [-0.1, -0.3])
    assert (b.text, b.finish_reason, b.logprobs, b.ok) == ("hi", "stop", None, True)
    assert c.finish_reason == "error" and not c.ok


# ------------------------------------------------------------------ ray.data.llm processor


def test_processor_config_fields() -> None:
    spec = ModelSpec(backend="vllm", path="/models/target", tensor_parallel_size=2, gpu_memory_utilization=0.7,
                     max_model_len=2048, dtype="float16")
    cfg = fv.processor_config(spec, Resources(replicas=3, batch_size=64, num_gpus=2))
    assert type(cfg).__module__ == "ray.data.llm"
    assert (cfg.model_source, cfg.batch_size, cfg.concurrency) == ("/models/target", 64, 3)
    assert cfg.engine_kwargs == dict(tensor_parallel_size=2, gpu_memory_utilization=0.7, dtype="float16",
                                     trust_remote_code=False, max_model_len=2048, task_type="generate")
    assert cfg.should_continue_on_error and cfg.chat_template_stage is True and cfg.placement_group_config is None
    raw = fv.processor_config(spec.model_copy(update={"use_chat_template": False}), Resources())
    assert raw.chat_template_stage is False
    # a fraction of a GPU (TP 1) shares it with another role
    shared = fv.processor_config(ModelSpec(backend="vllm", path="m", gpu_memory_utilization=0.4),
                                 Resources(num_gpus=0.5, num_cpus=1))
    assert shared.placement_group_config["bundle_per_worker"] == {"CPU": 1.0, "GPU": 0.5}
    with pytest.raises(ConfigError, match=r"resources.num_gpus=1 with model.tensor_parallel_size=2"):
        fv.processor_config(spec, Resources(num_gpus=1))


def test_pre_and_postprocess_map_our_columns() -> None:
    from ray.llm._internal.batch.stages.vllm_engine_stage import vLLMOutputData

    params = GenerationParams(n=2, seed=7, max_new_tokens=4, stop=["!"], logprobs=True)
    row = {"id": "a1", "run_id": "r", "iteration": 2, "prompt": "say hi", "gen_sample": 1}
    pre = fv.preprocess_row(row, params=params, use_chat_template=True, prompt_column="prompt",
                            sample_column="gen_sample")
    assert pre["messages"] == [{"role": "user", "content": "say hi"}]
    assert pre["sampling_params"] == {**fv.sampling_kwargs(params), "n": 1, "seed": 8}
    raw = fv.preprocess_row(row, params=params, use_chat_template=False, prompt_column="prompt",
                            sample_column="gen_sample")
    assert raw["prompt"] == "say hi" and "messages" not in raw
    with pytest.raises(ValueError, match="collide"):
        fv.preprocess_row({**row, "model": "x"}, params=params, use_chat_template=True, prompt_column="prompt",
                          sample_column="gen_sample")

    # what the engine stage hands to postprocess: our row, the stage outputs, the rendered prompt
    engine = vLLMOutputData(prompt="<|user|>say hi", prompt_token_ids=[3, 4], num_input_tokens=2,
                            generated_tokens=[8, 9, 10, 11], generated_text="hi hi hi hi", num_generated_tokens=4,
                            logprobs=[{8: {"logprob": -0.5}}, {9: {"logprob": -0.25}}, {10: {"logprob": -1.0}},
                                      {11: {"logprob": -0.125}}]).model_dump()
    done = {**row, **pre, **engine, "request_id": 0, "__inference_error__": ""}
    out = fv.postprocess_row(done, params=params, prefix="gen_")
    assert out == {"id": "a1", "run_id": "r", "iteration": 2, "prompt": "say hi", "gen_sample": 1,
                   "gen_text": "hi hi hi hi", "gen_finish_reason": "length", "gen_num_tokens": 4, "gen_error": None,
                   "gen_logprobs": [-0.5, -0.25, -1.0, -0.125]}
    short = fv.postprocess_row({**done, "generated_tokens": [8], "num_generated_tokens": 1,
                                "logprobs": [{"8": {"logprob": -0.5}}]}, params=params, prefix="gen_")
    assert short["gen_finish_reason"] == "stop" and short["gen_logprobs"] == [-0.5]
    # error rows skip postprocess inside the processor; finalize_row converts them
    failed = {**row, **pre, "prompt": "<|user|>say hi", "generated_text": "", "__inference_error__": "ValueError: too long"}
    err = fv.finalize_row(failed, params=params, prefix="gen_")
    assert err["prompt"] == "say hi" and err["gen_finish_reason"] == "error" and err["gen_text"] == ""
    assert err["gen_error"] == "ValueError: too long" and err["gen_num_tokens"] == 0
    assert fv.finalize_row({**out, "__inference_error__": ""}, params=params, prefix="gen_") == out


def test_processor_builds_and_its_cpu_stages_run_on_our_rows(ray_local: None, tiny_llama_dir) -> None:
    """build_processor for real (it reads the model's config); then Ray's chat-template and tokenize
    stages of that processor run on CPU over our expanded, preprocessed rows."""
    import ray
    from ray.data.llm import build_processor
    from transformers import AutoTokenizer

    from forewarn.models.hf import render_prompt

    path = str(tiny_llama_dir)
    params = GenerationParams(n=2, seed=7, max_new_tokens=8)
    tp2 = fv.build_vllm_processor(ModelSpec(backend="vllm", path=path, tensor_parallel_size=2, max_model_len=256),
                                  Resources(batch_size=4, replicas=2), params)
    assert tp2.list_stage_names() == ["ChatTemplateStage", "TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    engine = tp2.get_stage_by_name("vLLMEngineStage")
    assert engine.fn_constructor_kwargs["engine_kwargs"]["tensor_parallel_size"] == 2
    assert engine.fn_constructor_kwargs["engine_kwargs"]["distributed_executor_backend"] == "ray"
    assert engine.fn_constructor_kwargs["should_continue_on_error"] is True
    tp1 = fv.build_vllm_processor(ModelSpec(backend="vllm", path=path, use_chat_template=False),
                                  Resources(batch_size=4), params)
    assert tp1.list_stage_names() == ["TokenizeStage", "vLLMEngineStage", "DetokenizeStage"]
    assert tp1.get_stage_by_name("vLLMEngineStage").map_batches_kwargs["num_gpus"] == 1
    shared = fv.build_vllm_processor(ModelSpec(backend="vllm", path=path, gpu_memory_utilization=0.4),
                                     Resources(num_gpus=0.5, num_cpus=1), params)
    kw = shared.get_stage_by_name("vLLMEngineStage").map_batches_kwargs
    assert (kw["num_gpus"], kw["num_cpus"]) == (0.5, 1.0)

    # run the CPU stages of the same config (half a CPU each, so 2 CPUs leave room for the map tasks)
    spec = ModelSpec(backend="vllm", path=path)
    cfg = fv.processor_config(spec, Resources(batch_size=4))
    cfg.chat_template_stage = {"num_cpus": 0.5}
    cfg.tokenize_stage = {"num_cpus": 0.5}
    proc = build_processor(cfg, preprocess=partial(fv.preprocess_row, params=params, use_chat_template=True,
                                                   prompt_column="prompt", sample_column="sample"))
    for name in ("vLLMEngineStage", "DetokenizeStage"):
        proc.stages.pop(name)
    prompts = [f"question {i}" for i in range(3)]
    ds = ray.data.from_items([{"id": f"i{i}", "run_id": "r", "iteration": 0, "prompt": p}
                              for i, p in enumerate(prompts)])
    rows: list[dict[str, Any]] = proc(ds.flat_map(partial(fv.expand_samples, n=2, column="sample"))).take_all()
    rows.sort(key=lambda r: (r["id"], r["sample"]))
    assert [(r["id"], r["sample"]) for r in rows] == [(f"i{i}", k) for i in range(3) for k in range(2)]
    assert [r["sampling_params"]["seed"] for r in rows] == [7, 8] * 3
    tok = AutoTokenizer.from_pretrained(path)
    for r in rows:
        text = render_prompt(tok, r[fv._PROMPT], use_chat_template=True)  # the hf backend's rendering
        assert r["prompt"] == text
        assert list(r["tokenized_prompt"]) == tok(text, add_special_tokens=False)["input_ids"]
