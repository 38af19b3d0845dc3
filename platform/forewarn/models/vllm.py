"""The ``vllm`` backend: GPU generation with vLLM, in-process or as a Ray Data batch stage.

Two paths share the same mappings (``engine_kwargs``, ``sampling_kwargs``):

- ``VLLMGenerator``: a ``vllm.LLM`` in this process (inside an actor or a Serve replica). Prompts are
  rendered with the tokenizer's chat template exactly like the ``hf`` backend, left-truncated to
  ``spec.max_input_tokens`` and passed as token ids, so both backends see the same inputs.
- ``vllm_generate_stage``: the batch path through Ray's own ``ray.data.llm`` processor
  (``vLLMEngineProcessorConfig`` + ``build_processor``): Ray's chat-template and tokenize stages, the
  engine stage with ``tensor_parallel_size`` GPUs per replica, and our pre/postprocess that map
  forewarn's row columns. Its output columns are those of the ``hf`` generate stage.

vLLM is imported lazily, so this module imports on CPU machines; where vLLM is missing the backend
fails with ``BackendUnavailable`` and the install hint. ``ray.data.llm``'s engine stage returns the
first sample of each request only, so ``n`` samples become ``n`` rows before the processor (seeded
``seed + k`` when a seed is set), and it reports no finish reason, so ``length`` is inferred from the
token count reaching ``max_new_tokens``.
"""

from __future__ import annotations

from functools import partial
from types import ModuleType
from typing import TYPE_CHECKING, Any

from forewarn.config import GenerationParams, ModelSpec, Resources, RoleConfig
from forewarn.errors import BackendUnavailable, ConfigError
from forewarn.models.base import Completion, Prompt, as_chat

if TYPE_CHECKING:
    from ray.data import Dataset
    from ray.data.llm import Processor, vLLMEngineProcessorConfig

INSTALL_HINT = "pip install 'forewarn[gpu]' on a CUDA machine"

# Keys that ray.data.llm's stages read or write in a row: an input column with one of these names would
# be consumed or overwritten (``model`` even turns a row into a LoRA request). ``prompt`` is restored.
PROCESSOR_KEYS = frozenset({
    "messages", "sampling_params", "tokenized_prompt", "prompt_token_ids", "num_input_tokens",
    "generated_tokens", "generated_text", "num_generated_tokens", "embeddings", "metrics", "logprobs",
    "prompt_logprobs", "request_id", "batch_uuid", "time_taken_llm", "params", "model", "multimodal_data",
    "mm_processor_kwargs", "multimodal_uuids", "tokenization_kwargs", "__inference_error__",
})
_COLUMNS, _PROMPT = "_fw_columns", "_fw_prompt"  # our bookkeeping columns inside the processor


def import_vllm() -> ModuleType:
    """``import vllm``, or ``BackendUnavailable`` saying how to get it."""
    try:
        import vllm
    except ImportError as e:
        raise BackendUnavailable(
            f"model.backend='vllm' needs the vllm package, which is not importable here ({e}). "
            f"Install it with: {INSTALL_HINT}; on CPU use model.backend='hf' instead."
        ) from None
    return vllm


# ---------------------------------------------------------------- mappings (pure)


def engine_kwargs(spec: ModelSpec) -> dict[str, Any]:
    """``vllm.LLM`` / ``engine_kwargs`` from a ModelSpec."""
    kw: dict[str, Any] = dict(tensor_parallel_size=spec.tensor_parallel_size,
                              gpu_memory_utilization=spec.gpu_memory_utilization,
                              dtype=spec.dtype, trust_remote_code=spec.trust_remote_code)
    if spec.max_model_len is not None:
        kw["max_model_len"] = spec.max_model_len
    return kw


def sampling_kwargs(params: GenerationParams, n: int | None = None,
                    seed: int | None = None) -> dict[str, Any]:
    """``vllm.SamplingParams`` kwargs from GenerationParams (``n``/``seed`` override per request).

    ``top_k=-1`` disables top-k in every vLLM version; ``logprobs=0`` returns the sampled token's
    log-prob only, which is what ``Completion.logprobs`` holds.
    """
    return dict(
        n=params.n if n is None else n,
        temperature=params.temperature,
        top_p=params.top_p,
        top_k=params.top_k if params.top_k > 0 else -1,
        seed=params.seed if seed is None else seed,
        stop=list(params.stop),
        max_tokens=params.max_new_tokens,
        logprobs=0 if params.logprobs else None,
        presence_penalty=params.presence_penalty,
        frequency_penalty=params.frequency_penalty,
        repetition_penalty=params.repetition_penalty,
    )


def to_sampling_params(params: GenerationParams) -> Any:
    """A real ``vllm.SamplingParams`` (needs vLLM)."""
    return import_vllm().SamplingParams(**sampling_kwargs(params))


def _sampled_logprobs(token_ids: list[int], steps: list[Any] | None) -> list[float] | None:
    """Per-step ``{token_id: Logprob | dict}`` to the sampled tokens' log-probs."""
    if steps is None:
        return None
    out = []
    for tid, step in zip(token_ids, steps):
        entry = step.get(tid, step.get(str(tid))) if isinstance(step, dict) else None
        if entry is None:
            raise ValueError(f"vLLM returned no log-prob for sampled token {tid}")
        out.append(float(entry["logprob"] if isinstance(entry, dict) else entry.logprob))
    return out


def completions_from_output(request_output: Any) -> list[Completion]:
    """A ``vllm.RequestOutput`` to our Completions (finish ``abort`` becomes an error row)."""
    out = []
    for o in request_output.outputs:
        ids = [int(t) for t in o.token_ids]
        reason = o.finish_reason or "stop"
        if reason == "abort":
            out.append(Completion("", ids, "error", error="vLLM aborted the request"))
            continue
        out.append(Completion(text=o.text, token_ids=ids, finish_reason=reason,
                              logprobs=_sampled_logprobs(ids, o.logprobs)))
    return out


# ---------------------------------------------------------------- in-process generator


class VLLMGenerator:
    """Batched generation with a ``vllm.LLM`` loaded once (GPU; tensor parallel over the spec's GPUs)."""

    def __init__(self, spec: ModelSpec):
        vllm = import_vllm()
        self.spec = spec
        self.name = spec.path
        self.llm = vllm.LLM(model=spec.path, **engine_kwargs(spec))
        self.tokenizer = self.llm.get_tokenizer()

    def encode(self, prompts: list[Prompt]) -> list[dict[str, list[int]]]:
        """Render (chat template as in the hf backend), tokenize, left-truncate to max_input_tokens."""
        from forewarn.models.hf import render_prompt

        texts = [render_prompt(self.tokenizer, p, self.spec.use_chat_template) for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [{"prompt_token_ids": list(x[-self.spec.max_input_tokens:])} for x in ids]

    def generate(self, prompts: list[Prompt], params: GenerationParams) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order."""
        if not prompts:
            return []
        outputs = self.llm.generate(self.encode(prompts), to_sampling_params(params), use_tqdm=False)
        return [completions_from_output(o) for o in outputs]


# ---------------------------------------------------------------- Ray Data batch path


def processor_config(spec: ModelSpec, resources: Resources) -> "vLLMEngineProcessorConfig":
    """The ``ray.data.llm`` engine config of a role: replicas, batch size, TP, memory, chat template.

    Each replica takes ``tensor_parallel_size`` whole GPUs, unless ``resources.num_gpus`` is a
    fraction (with TP 1) to share a GPU with another role; ``gpu_memory_utilization`` then splits the
    memory. Failed rows are kept (``should_continue_on_error``) and become error rows.
    """
    from ray.data.llm import vLLMEngineProcessorConfig

    tp = spec.tensor_parallel_size
    pg = None
    if resources.num_gpus and resources.num_gpus != tp:
        if not (resources.num_gpus < 1 and tp == 1):
            raise ConfigError(
                f"resources.num_gpus={resources.num_gpus:g} with model.tensor_parallel_size={tp}: a vLLM "
                f"replica takes tensor_parallel_size whole GPUs; set resources.num_gpus to {tp} (or 0 to "
                "let ray.data.llm decide), or below 1 with tensor_parallel_size 1 to share a GPU"
            )
        pg = {"bundle_per_worker": {"CPU": resources.num_cpus, "GPU": resources.num_gpus}}
    return vLLMEngineProcessorConfig(
        model_source=spec.path,
        engine_kwargs=engine_kwargs(spec),
        batch_size=resources.batch_size,
        concurrency=resources.replicas,
        should_continue_on_error=True,
        chat_template_stage=spec.use_chat_template,
        placement_group_config=pg,
    )


def expand_samples(row: dict[str, Any], *, n: int, column: str) -> list[dict[str, Any]]:
    """One row per sample: the engine stage returns one output per request."""
    return [{**row, column: k} for k in range(n)]


def _as_prompt(value: Any) -> Prompt:
    if isinstance(value, str):
        return value
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def preprocess_row(row: dict[str, Any], *, params: GenerationParams, use_chat_template: bool,
                   prompt_column: str, sample_column: str) -> dict[str, Any]:
    """Our row to the processor's inputs: ``messages`` (or a raw ``prompt``) and ``sampling_params``."""
    clash = sorted(set(row) & PROCESSOR_KEYS)
    if clash:
        raise ValueError(f"input columns {clash} collide with ray.data.llm's row keys; rename them "
                         "before the vllm generate stage")
    prompt = _as_prompt(row[prompt_column])
    k = int(row.get(sample_column, 0))
    seed = None if params.seed is None else params.seed + k
    out: dict[str, Any] = {"sampling_params": sampling_kwargs(params, n=1, seed=seed),
                           _COLUMNS: [c for c in row if c not in (_COLUMNS, _PROMPT)],
                           _PROMPT: row.get("prompt")}
    if use_chat_template:
        out["messages"] = as_chat(prompt)
    elif isinstance(prompt, str):
        out["prompt"] = prompt
    else:
        raise ValueError(f"column {prompt_column!r} holds a chat but model.use_chat_template is False; "
                         "pass strings or enable the chat template")
    return out


def postprocess_row(row: dict[str, Any], *, params: GenerationParams, prefix: str) -> dict[str, Any]:
    """Processor output (a success row, or an error row that bypassed postprocess) to our columns:
    the input columns plus ``{prefix}text``, ``finish_reason``, ``num_tokens``, ``error`` (and
    ``logprobs`` when requested); ``{prefix}sample`` is already an input column."""
    out = {c: row.get(c) for c in row[_COLUMNS]}
    if "prompt" in out:
        out["prompt"] = row[_PROMPT]  # the chat-template stage overwrote it with the rendered text
    error = row.get("__inference_error__") or None
    tokens = [] if error else [int(t) for t in (row.get("generated_tokens") or [])]
    num = len(tokens) if tokens else int(row.get("num_generated_tokens") or 0)
    out[f"{prefix}text"] = "" if error else str(row.get("generated_text") or "")
    finish = "length" if num >= params.max_new_tokens else "stop"
    out[f"{prefix}finish_reason"] = "error" if error else finish
    out[f"{prefix}num_tokens"] = 0 if error else num
    out[f"{prefix}error"] = error
    if params.logprobs:
        out[f"{prefix}logprobs"] = None if error else _sampled_logprobs(tokens, row.get("logprobs"))
    return out


def finalize_row(row: dict[str, Any], *, params: GenerationParams, prefix: str) -> dict[str, Any]:
    """After the processor: convert error rows (they skip postprocess) and drop the error marker."""
    if row.get("__inference_error__"):
        return postprocess_row(row, params=params, prefix=prefix)
    return {k: v for k, v in row.items() if k != "__inference_error__"}


def build_vllm_processor(spec: ModelSpec, resources: Resources, params: GenerationParams,
                         prompt_column: str = "prompt", prefix: str = "") -> "Processor":
    """A ``ray.data.llm`` processor for one role; input rows must already be expanded per sample.

    Building needs only Ray and transformers (it reads the model's config); running it needs vLLM on
    the GPU workers. ``vllm_generate_stage`` is the entry point that does the expansion and checks.
    """
    from ray.data.llm import build_processor

    return build_processor(
        processor_config(spec, resources),
        preprocess=partial(preprocess_row, params=params, use_chat_template=spec.use_chat_template,
                           prompt_column=prompt_column, sample_column=f"{prefix}sample"),
        postprocess=partial(postprocess_row, params=params, prefix=prefix),
    )


def vllm_generate_stage(ds: "Dataset", role: RoleConfig, params: GenerationParams,
                        prompt_column: str = "prompt", prefix: str = "") -> "Dataset":
    """The vllm backend of ``forewarn.pipeline.stages.generate_stage``: ``params.n`` rows per input row,
    with ``{prefix}sample``, ``text``, ``finish_reason``, ``num_tokens`` and ``error`` columns."""
    import_vllm()  # fail on the driver with the install hint, not later inside an engine actor
    processor = build_vllm_processor(role.model, role.resources, params, prompt_column, prefix)
    ds = ds.flat_map(partial(expand_samples, n=params.n, column=f"{prefix}sample"))
    return processor(ds).map(partial(finalize_row, params=params, prefix=prefix))
