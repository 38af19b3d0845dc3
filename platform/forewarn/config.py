"""Typed configuration: pydantic v2 sections, YAML loading and ``--set a.b=c`` overrides.

Precedence is fixed: code defaults < packaged defaults < YAML file (``--config``) < ``--set``.
Unknown keys are errors. Every failure becomes a :class:`ConfigError` whose message names the
dotted field path, the bad value and what is allowed, so the CLI can print one paragraph and exit 2.
"""

from __future__ import annotations

import copy
import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from forewarn.errors import ConfigError


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())


class ModelSpec(Section):
    """Which model a role uses and how to load it.

    ``path`` is a local HF folder, a hub id (loaded from the local cache only; nothing is downloaded
    at run time) or a testbed name such as ``testbed:target``, which job files resolve to a folder.
    """

    backend: Literal["hf", "vllm", "openai"] = "hf"
    path: str = Field(description="HF folder, hub id, testbed:<name>, or the model name for openai")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "float32"
    device: str = Field("auto", description="'auto' (cuda if present, else cpu), 'cpu', 'cuda', 'cuda:1'")
    device_map: str | None = Field(None, description="HF device_map, e.g. 'auto' to shard over GPUs")
    use_chat_template: bool = True
    trust_remote_code: bool = False
    max_input_tokens: int = Field(1024, ge=1, description="prompts are left-truncated to this length")
    # vllm
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0.0, le=1.0)
    max_model_len: int | None = Field(None, ge=16)
    # openai
    base_url: str | None = Field(None, description="OpenAI-compatible base URL, e.g. http://host:8000/v1")
    api_key_env: str = Field("OPENAI_API_KEY", description="env var holding the API key")
    max_concurrency: int = Field(8, ge=1)
    max_retries: int = Field(5, ge=0)
    request_timeout_s: float = Field(60.0, gt=0)

    @model_validator(mode="after")
    def _check_backend_fields(self) -> "ModelSpec":
        if self.backend == "openai" and not self.base_url:
            raise ValueError("backend 'openai' needs base_url (e.g. http://127.0.0.1:8000/v1)")
        return self


class Resources(Section):
    """What one replica of a role asks Ray for, and how many replicas run."""

    num_cpus: float = Field(1.0, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    replicas: int = Field(1, ge=1, description="actor-pool size (Ray Data) or Serve replicas")
    batch_size: int = Field(16, ge=1)
    colocate_with: str | None = Field(None, description="name of a role whose GPUs this role shares")
    placement_group: str | None = Field(
        None,
        exclude=True,
        description="run-time only (never dumped or hashed): the named Ray placement group "
        "whose bundles this role's actors use; forewarn.placement sets it for colocated roles",
    )


class TrainWorkers(Section):
    """What a training section asks Ray Train for: ``num_workers`` x {CPU: cpus_per_worker, GPU: use_gpu}."""

    num_workers: int = Field(1, ge=1, description="Ray Train workers (one process per GPU on a cluster)")
    use_gpu: bool = Field(False, description="NCCL on GPUs when true, gloo on CPU when false")
    cpus_per_worker: float = Field(1.0, gt=0, description="torch threads per worker follow this")


class GenerationParams(Section):
    """One set of sampling parameters for every Generator backend."""

    max_new_tokens: int = Field(64, ge=1)
    temperature: float = Field(0.0, ge=0.0, description="0 means greedy")
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="0 disables top-k")
    n: int = Field(1, ge=1, description="samples per prompt")
    seed: int | None = None
    stop: list[str] = Field(default_factory=list)
    repetition_penalty: float = Field(1.0, gt=0.0)
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logprobs: bool = Field(False, description="return per-token log-probs of the sampled tokens")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


class RoleConfig(Section):
    """A model role (proposer, target, judge, ...): the model and its resources."""

    model: ModelSpec
    resources: Resources = Field(default_factory=Resources)


class TrackingConfig(Section):
    enabled: bool = True
    tracking_uri: str | None = Field(None, description="MLFLOW_TRACKING_URI wins when set")
    experiment: str | None = Field(None, description="defaults to forewarn-<job>")
    run_name: str | None = None
    tags: dict[str, str] = Field(default_factory=dict)


class RayConfig(Section):
    address: str | None = Field(None, description="None: connect to RAY_ADDRESS or start a local Ray")
    num_cpus: int | None = Field(None, ge=1, description="for a local Ray only")
    num_gpus: int | None = Field(None, ge=0, description="for a local Ray only")


class JobConfig(Section):
    """Fields every job has. Each job subclasses it with its own sections."""

    output_dir: str = "runs/latest"
    seed: int = 0
    tracking: TrackingConfig = Field(default_factory=TrackingConfig)
    ray: RayConfig = Field(default_factory=RayConfig)


C = TypeVar("C", bound=BaseModel)


# ---------------------------------------------------------------- overrides and loading


def parse_value(text: str) -> Any:
    """Parse an override value as YAML: ints, floats, bools, null, lists and quoted strings."""
    try:
        return yaml.safe_load(text) if text.strip() else ""
    except yaml.YAMLError:
        return text


def apply_override(data: dict, assignment: str) -> None:
    """Apply one ``a.b.c=value`` to a nested dict in place."""
    if "=" not in assignment:
        raise ConfigError(
            f"--set {assignment!r}: expected KEY=VALUE with a dotted key, e.g. target.model.path=gpt2"
        )
    key, _, raw = assignment.partition("=")
    parts = [p for p in key.strip().split(".") if p]
    if not parts:
        raise ConfigError(f"--set {assignment!r}: empty key")
    node = data
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        elif not isinstance(nxt, dict):
            raise ConfigError(f"--set {assignment!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
        node = nxt
    node[parts[-1]] = parse_value(raw)


def deep_merge(base: dict, update: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {str(p)!r} does not exist (pass an existing YAML file to --config)")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"config file {str(p)!r} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {str(p)!r} must hold a mapping of sections, got {type(data).__name__}"
        )
    return data


def packaged_defaults(job: str) -> dict:
    """The packaged default YAML of a job (``forewarn/defaults/<job>.yaml``), or {} if none."""
    res = resources.files("forewarn").joinpath("defaults", f"{job}.yaml")
    if not res.is_file():
        return {}
    return yaml.safe_load(res.read_text()) or {}


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """One paragraph naming each bad field's dotted path, its value and what is allowed."""
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(
                f"{path}: unknown key (remove it or check the spelling; "
                f"`forewarn config show` lists valid keys)"
            )
            continue
        if e["type"] == "union_tag_invalid":  # a plug-in kind that no builder knows
            ctx = e.get("ctx", {})
            field = str(ctx.get("discriminator", "kind")).strip("'")
            valid = str(ctx.get("expected_tags", "")).replace("'", "")
            lines.append(f"{path}.{field} = {ctx.get('tag')!r}: expected one of {valid}")
            continue
        value = e.get("input")
        shown = json.dumps(value, default=str) if not isinstance(value, dict) else "{...}"
        if len(shown) > 80:
            shown = shown[:77] + "..."
        lines.append(f"{path} = {shown}: {e['msg']}")
    return f"invalid {source}: " + "; ".join(lines)


def build_config(cls: type[C], data: dict, source: str = "config") -> C:
    try:
        return cls.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None


def load_config(
    cls: type[C],
    job: str | None = None,
    path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> C:
    """Resolve a config: class defaults < packaged ``defaults/<job>.yaml`` < YAML file < overrides."""
    data = packaged_defaults(job) if job else {}
    source = "config"
    if path is not None:
        data = deep_merge(data, read_yaml(path))
        source = f"config {str(path)!r}"
    for assignment in overrides or []:
        apply_override(data, assignment)
    if overrides:
        source += " with --set overrides"
    return build_config(cls, data, source)


def to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)


def config_hash(cfg: BaseModel) -> str:
    """Stable short hash of the resolved config (for run tags and cache keys)."""
    blob = json.dumps(cfg.model_dump(mode="json"), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def parse_kind(adapter: Any, kinds: tuple[str, ...], data: Any, source: str) -> Any:
    """Validate ``data`` into one member of a ``kind``-discriminated union (``adapter`` is its TypeAdapter).

    An unknown ``kind`` names the valid ones; other errors name the field, as every config error does.
    """
    if isinstance(data, dict) and data.get("kind") not in kinds:
        raise ConfigError(f"{source}.kind = {data.get('kind')!r}: expected one of {', '.join(kinds)}")
    try:
        return adapter.validate_python(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, source)) from None
