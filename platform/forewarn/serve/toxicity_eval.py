"""Toxic-answer rates of the guarded endpoint against the same generator unguarded, over HTTP.

The guard's claim on a real model is a rate: of the answers a client receives for a prompt set, how many are
toxic with the guard on, and how many without it. :func:`serve_pair` deploys one :class:`ServeConfig` twice on
local Ray Serve -- ``/guarded`` as configured and ``/plain`` with ``guard_enabled: false`` (same generator,
same decoding, same stop detectors) -- :func:`ask` sends every prompt to one of them with the ``openai`` client
(greedy, one chat turn), and :func:`rates` scores what the client received with an independent judge (a fresh
instance, not the guard's own verdicts), so a guard that lets text through is counted against itself.

:func:`local_answers` does the same without Ray (``forewarn.serve.local``: the same policy code, one process, one
request at a time, the ``hf`` generator loaded once for both modes): the cheap path for a laptop and for CI.

``benchmarks/guard_toxicity.py`` is the command line; ``tests/test_real_guard.py`` runs both paths on SmolLM2.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from forewarn.config import GenerationParams
from forewarn.models.hf import HFGenerator
from forewarn.serve.config import ServeConfig
from forewarn.serve.local import build_local

MODES = ("guarded", "plain")


@dataclass
class Answer:
    """What a client received for one prompt: the text and the finish reason the endpoint sent."""

    prompt: str
    text: str
    finish_reason: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def serve_pair(cfg: ServeConfig, port: int | None = None) -> Iterator[dict[str, str]]:
    """Deploy ``cfg`` guarded and unguarded on local Serve; yields ``{mode: base_url}``, shuts Serve down after.

    ``cfg.generator.model.path`` must be a local folder (the caller resolves names). Ray must already be
    initialised by the caller (its CPU count is the caller's choice).
    """
    from ray import serve

    # lazy: loads fastapi, ray, starlette only when called
    from forewarn.serve.serving import app_from_config

    port = port or free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        urls = {}
        for mode in MODES:
            one = cfg.model_copy(update={"guard_enabled": mode == "guarded", "app_name": mode})
            serve.run(app_from_config(one), name=mode, route_prefix=f"/{mode}")
            urls[mode] = f"http://127.0.0.1:{port}/{mode}/v1"
        yield urls
    finally:
        serve.shutdown()


def ask(
    base_url: str,
    model_name: str,
    prompts: Sequence[str],
    max_tokens: int,
    concurrency: int = 4,
    api_key: str = "unused",
    timeout_s: float = 600.0,
) -> list[Answer]:
    """Send each prompt as one user turn (temperature 0) and keep what came back, in prompt order."""
    import openai

    client = openai.OpenAI(base_url=base_url, api_key=api_key, max_retries=0, timeout=timeout_s)

    def one(prompt: str) -> Answer:
        r = client.chat.completions.create(
            model=model_name,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=max_tokens,
            temperature=0,
        )
        choice = r.choices[0]
        return Answer(prompt, choice.message.content or "", str(choice.finish_reason))

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, prompts))


def local_answers(cfg: ServeConfig, prompts: Sequence[str], max_tokens: int) -> dict[str, list[Answer]]:
    """Both modes in this process through ``forewarn.serve.local.build_local`` (hf backend only; the model path
    must be a folder). Greedy, one chat turn per prompt, like :func:`ask`."""
    import asyncio

    if cfg.generator.model.backend != "hf":
        raise ValueError(
            f"generator.model.backend={cfg.generator.model.backend!r}: the in-process path runs hf "
            "only; measure a vllm generator over HTTP (serve_pair + ask)"
        )
    generator = HFGenerator(cfg.generator.model)
    params = GenerationParams(max_new_tokens=max_tokens, temperature=0.0)
    out: dict[str, list[Answer]] = {}
    for mode in MODES:
        pipe = build_local(cfg.model_copy(update={"guard_enabled": mode == "guarded"}), generator)

        async def one(prompt: str, pipe: Any = pipe) -> Answer:
            res = await pipe.run([{"role": "user", "content": prompt}], params)
            choice = res.choices[0]
            return Answer(prompt, choice.text, choice.finish_reason)

        out[mode] = [asyncio.run(one(p)) for p in prompts]
    return out


def rates(answers: dict[str, list[Answer]], judge: Any) -> dict[str, Any]:
    """Per mode: the share of answers ``judge`` calls unsafe, their mean score, and the finish reasons seen.

    Also the paired counts that say what the guard did: toxic answers of the plain endpoint whose guarded
    answer is clean (blocked), and clean plain answers that the guard changed (collateral)."""
    verdicts = {
        m: judge.judge([a.prompt for a in rows], [a.text for a in rows]) for m, rows in answers.items()
    }
    out: dict[str, Any] = {"judge": judge.name, "modes": {}}
    for mode, vs in verdicts.items():
        reasons: dict[str, int] = {}
        for a in answers[mode]:
            reasons[a.finish_reason] = reasons.get(a.finish_reason, 0) + 1
        out["modes"][mode] = {
            "answers": len(vs),
            "toxic": sum(v.unsafe for v in vs),
            "toxic_rate": round(sum(v.unsafe for v in vs) / max(1, len(vs)), 4),
            "mean_score": round(sum(v.score for v in vs) / max(1, len(vs)), 4),
            "finish_reasons": reasons,
        }
    if set(MODES) <= verdicts.keys():
        g, p = verdicts["guarded"], verdicts["plain"]
        changed = [a.text != b.text for a, b in zip(answers["guarded"], answers["plain"])]
        out["plain_toxic_made_clean"] = sum(pv.unsafe and not gv.unsafe for gv, pv in zip(g, p))
        out["plain_clean_changed"] = sum(c and not pv.unsafe for c, pv in zip(changed, p))
    return out
