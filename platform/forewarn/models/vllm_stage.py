"""The ``vllm`` backend's batch path: Ray's own ``ray.data.llm`` processor over forewarn's rows.

``generate_stage`` expands each row into ``params.n`` sample rows, maps them to the processor's inputs
(``messages`` or a raw ``prompt``, and per-row ``sampling_params`` seeded from the row's ``id`` as in the hf
stage), runs Ray's chat-template, tokenize, vLLM engine and detokenize stages (``vLLMEngineProcessorConfig``
+ ``build_processor``), and maps the outputs back to the hf stage's columns: the input columns plus
``{prefix}sample``, ``text``, ``finish_reason``, ``num_tokens``, ``error`` (and ``logprobs`` when asked).
The engine stage reports no finish reason, so stop strings stay in its text and are cut here, and the end
token is recognised from the model's tokenizer and generation config. Failed rows become error rows.

On GPUs each engine replica takes ``tensor_parallel_size`` GPUs; with the CPU build of vLLM it takes
``resources.num_cpus`` CPUs and the light stages around it a quarter CPU each. Building the processor needs
Ray and transformers; running it needs vLLM on the engine workers (the driver checks it is importable).
"""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

from forewarn.config import GenerationParams, ModelSpec, Resources, RoleConfig
from forewarn.errors import ConfigError
from forewarn.models.base import Prompt, apply_stop, as_chat, row_seed, sample_seed
from forewarn.models.vllm import (
    engine_kwargs,
    installed_platform,
    resolve_device,
    sampled_logprobs,
    sampling_kwargs,
)

if TYPE_CHECKING:
    from ray.data import Dataset
    from ray.data.llm import Processor, vLLMEngineProcessorConfig

# On CPU the engine's CPUs and the light stages around it (chat template, tokenize, detokenize, our row
# mapping) share one machine; each light stage asks for this share so that a 2-CPU node runs them all.
LIGHT_STAGE_CPUS = 0.25

# Keys that ray.data.llm's stages read or write in a row: an input column with one of these names would
# be consumed or overwritten (``model`` even turns a row into a LoRA request). ``prompt`` is restored.
PROCESSOR_KEYS = frozenset(
    {
        "messages",
        "sampling_params",
        "tokenized_prompt",
        "prompt_token_ids",
        "num_input_tokens",
        "generated_tokens",
        "generated_text",
        "num_generated_tokens",
        "embeddings",
        "metrics",
        "logprobs",
        "prompt_logprobs",
        "request_id",
        "batch_uuid",
        "time_taken_llm",
        "params",
        "model",
        "multimodal_data",
        "mm_processor_kwargs",
        "multimodal_uuids",
        "tokenization_kwargs",
        "__inference_error__",
    }
)
_COLUMNS, _PROMPT = "_fw_columns", "_fw_prompt"  # our bookkeeping columns inside the processor


def processor_config(
    spec: ModelSpec, resources: Resources, device: str = "cuda"
) -> vLLMEngineProcessorConfig:
    """The ``ray.data.llm`` engine config of a role: replicas, batch size, TP, memory, chat template.

    On GPUs each replica takes ``tensor_parallel_size`` whole GPUs, unless ``resources.num_gpus`` is a
    fraction (with TP 1) to share a GPU with another role; ``gpu_memory_utilization`` then splits the
    memory. On CPU each replica asks for ``resources.num_cpus`` CPUs per worker and no GPU. Failed rows
    are kept (``should_continue_on_error``) and become error rows.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    tp = spec.tensor_parallel_size
    pg = None
    if device == "cpu":
        if resources.num_gpus:
            raise ConfigError(
                f"resources.num_gpus={resources.num_gpus:g} with the CPU build of vLLM (model.device="
                f"{spec.device!r}): a CPU engine takes no GPU; set resources.num_gpus to 0"
            )
        pg = {"bundle_per_worker": {"CPU": resources.num_cpus}}
    elif resources.num_gpus and resources.num_gpus != tp:
        if not (resources.num_gpus < 1 and tp == 1):
            raise ConfigError(
                f"resources.num_gpus={resources.num_gpus:g} with model.tensor_parallel_size={tp}: a vLLM "
                f"replica takes tensor_parallel_size whole GPUs; set resources.num_gpus to {tp} (or 0 to "
                "let ray.data.llm decide), or below 1 with tensor_parallel_size 1 to share a GPU"
            )
        pg = {"bundle_per_worker": {"CPU": resources.num_cpus, "GPU": resources.num_gpus}}
    light = {"num_cpus": LIGHT_STAGE_CPUS} if device == "cpu" else {}
    return vLLMEngineProcessorConfig(
        model_source=spec.path,
        engine_kwargs=engine_kwargs(spec, device),
        batch_size=resources.batch_size,
        concurrency=resources.replicas,
        should_continue_on_error=True,
        chat_template_stage={"enabled": spec.use_chat_template, **light},
        tokenize_stage={"enabled": True, **light},
        detokenize_stage={"enabled": True, **light},
        placement_group_config=pg,
    )


def expand_samples(row: dict[str, Any], *, n: int, column: str) -> list[dict[str, Any]]:
    """One row per sample: the engine stage returns one output per request."""
    return [{**row, column: k} for k in range(n)]


def _as_prompt(value: Any) -> Prompt:
    if isinstance(value, str):
        return value
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def stage_seed(row: dict[str, Any], params: GenerationParams, k: int) -> int | None:
    """The seed of sample ``k`` of a stage row: from its ``id`` when it has one (``row_seed``, as the hf
    stage), else from ``params.seed``; then ``sample_seed`` per sample, as ``VLLMGenerator.generate``."""
    if params.seed is None:
        return None
    base = row_seed(params.seed, str(row["id"])) if row.get("id") is not None else params.seed
    return base if params.greedy else sample_seed(base, k)


def preprocess_row(
    row: dict[str, Any],
    *,
    params: GenerationParams,
    use_chat_template: bool,
    prompt_column: str,
    sample_column: str,
) -> dict[str, Any]:
    """Our row to the processor's inputs: ``messages`` (or a raw ``prompt``) and ``sampling_params``.

    Stop strings stay in the engine's text (``include_stop_str_in_output``) so that postprocess can cut
    them and report the finish reason, which the engine stage does not pass on.
    """
    clash = sorted(set(row) & PROCESSOR_KEYS)
    if clash:
        raise ValueError(
            f"input columns {clash} collide with ray.data.llm's row keys; rename them "
            "before the vllm generate stage"
        )
    prompt = _as_prompt(row[prompt_column])
    k = int(row.get(sample_column, 0))
    sampling = {**sampling_kwargs(params, stage_seed(row, params, k)), "include_stop_str_in_output": True}
    out: dict[str, Any] = {
        "sampling_params": sampling,
        _COLUMNS: [c for c in row if c not in (_COLUMNS, _PROMPT)],
        _PROMPT: row.get("prompt"),
    }
    if use_chat_template:
        out["messages"] = as_chat(prompt)
    elif isinstance(prompt, str):
        out["prompt"] = prompt
    else:
        raise ValueError(
            f"column {prompt_column!r} holds a chat but model.use_chat_template is False; "
            "pass strings or enable the chat template"
        )
    return out


def postprocess_row(
    row: dict[str, Any], *, params: GenerationParams, prefix: str, end_ids: frozenset[int] = frozenset()
) -> dict[str, Any]:
    """Processor output (a success row, or an error row that bypassed postprocess) to our columns:
    the input columns plus ``{prefix}text``, ``finish_reason``, ``num_tokens``, ``error`` (and
    ``logprobs`` when requested); ``{prefix}sample`` is already an input column.

    The finish reason, as in the hf backend: ``stop`` on a stop string or an end token (``end_ids``,
    left out of the token count), else ``length`` once ``max_new_tokens`` tokens were generated.
    """
    out = {c: row.get(c) for c in row[_COLUMNS]}
    if "prompt" in out:
        out["prompt"] = row[_PROMPT]  # the chat-template stage overwrote it with the rendered text
    error = row.get("__inference_error__") or None
    tokens = [] if error else [int(t) for t in (row.get("generated_tokens") or [])]
    lps = None if error or not params.logprobs else sampled_logprobs(tokens, row.get("logprobs"))
    ended = bool(tokens) and tokens[-1] in end_ids
    if ended:
        tokens, lps = tokens[:-1], None if lps is None else lps[:-1]
    text, hit = apply_stop("" if error else str(row.get("generated_text") or ""), params.stop)
    finish = "stop" if hit or ended or len(tokens) < params.max_new_tokens else "length"
    out[f"{prefix}text"] = text
    out[f"{prefix}finish_reason"] = "error" if error else finish
    out[f"{prefix}num_tokens"] = len(tokens)
    out[f"{prefix}error"] = error
    if params.logprobs:
        out[f"{prefix}logprobs"] = lps
    return out


def finalize_row(row: dict[str, Any], *, params: GenerationParams, prefix: str) -> dict[str, Any]:
    """After the processor: convert error rows (they skip postprocess) and drop the error marker."""
    if row.get("__inference_error__"):
        return postprocess_row(row, params=params, prefix=prefix)
    return {k: v for k, v in row.items() if k != "__inference_error__"}


def end_token_ids(spec: ModelSpec) -> frozenset[int]:
    """The ids that end a sequence for vLLM: the tokenizer's end token and the generation config's."""
    from transformers import AutoTokenizer, GenerationConfig

    tok = AutoTokenizer.from_pretrained(spec.path, trust_remote_code=spec.trust_remote_code)
    ids = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(spec.path).eos_token_id
    except OSError:  # no generation_config.json: vLLM then uses the tokenizer's end token only
        eos = None
    ids.update([eos] if isinstance(eos, int) else eos or [])
    return frozenset(int(i) for i in ids)


def build_vllm_processor(
    spec: ModelSpec,
    resources: Resources,
    params: GenerationParams,
    prompt_column: str = "prompt",
    prefix: str = "",
    device: str = "cuda",
) -> Processor:
    """A ``ray.data.llm`` processor for one role; input rows must already be expanded per sample.

    Building needs Ray and transformers (it reads the model's config and tokenizer); running it needs
    vLLM on the engine workers. ``vllm_generate_stage`` is the entry point that does the expansion.
    """
    from ray.data.llm import build_processor

    light = {"num_cpus": LIGHT_STAGE_CPUS} if device == "cpu" else None
    return build_processor(
        processor_config(spec, resources, device),
        preprocess_map_kwargs=light,
        postprocess_map_kwargs=light,
        preprocess=partial(
            preprocess_row,
            params=params,
            use_chat_template=spec.use_chat_template,
            prompt_column=prompt_column,
            sample_column=f"{prefix}sample",
        ),
        postprocess=partial(postprocess_row, params=params, prefix=prefix, end_ids=end_token_ids(spec)),
    )


def generate_stage(
    ds: Dataset, role: RoleConfig, params: GenerationParams, prompt_column: str = "prompt", prefix: str = ""
) -> Dataset:
    """The vllm backend of ``forewarn.pipeline.stages.generate_stage``: ``params.n`` rows per input row,
    with ``{prefix}sample``, ``text``, ``finish_reason``, ``num_tokens`` and ``error`` columns (and
    ``logprobs`` when asked). The device follows ``model.device`` and the vLLM build on the driver."""
    device = resolve_device(role.model, installed_platform())  # fails here with the hint, not in an actor
    processor = build_vllm_processor(role.model, role.resources, params, prompt_column, prefix, device)
    light = {"num_cpus": LIGHT_STAGE_CPUS} if device == "cpu" else {}
    ds = ds.flat_map(partial(expand_samples, n=params.n, column=f"{prefix}sample"), **light)
    return processor(ds).map(partial(finalize_row, params=params, prefix=prefix), **light)
