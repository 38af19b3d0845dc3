"""Config sections of the Goodtriever capability: datastores, faiss indexes, and the decoding mitigations.

``MitigationSpec`` is the union (discriminated by ``kind``) that the guarded generator takes as a list of
"decoding mitigations"; :func:`forewarn.goodtriever.processors.build_processor` turns one into a
``transformers.LogitsProcessor``. Defaults follow the Goodtriever reference (one source of defaults:
k 1024, T 100, alpha 2.0, filter_p 0.9, probe 32, IVFPQ 4096 x 64 x 8 bits).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union, get_args

from pydantic import Field, TypeAdapter, field_validator, model_validator

from forewarn.config import ModelSpec, Resources, Section, parse_kind

Role = Literal["subtract", "add"]


class IndexSpec(Section):
    """The faiss index of a datastore. ``flat`` is exact L2; ``ivfpq`` is approximate and compact."""

    kind: Literal["flat", "ivfpq"] = "ivfpq"
    nlist: int = Field(4096, ge=1, description="IVF coarse centroids (ivfpq)")
    m: int = Field(64, ge=1, description="PQ sub-quantisers; must divide the key dimension (ivfpq)")
    nbits: int = Field(8, ge=1, le=16, description="bits per PQ code (ivfpq)")
    nprobe: int = Field(32, ge=1, description="IVF lists searched per query (ivfpq)")
    train_size: int = Field(1_000_000, ge=1, description="keys sampled (seeded) to train the index")
    add_chunk: int = Field(1_000_000, ge=1, description="keys added per shard, so memory stays bounded")
    seed: int = 1
    gpu: bool | None = Field(None, description="use GPU faiss: None = when faiss sees a GPU, True = required")
    fp16_lookup: bool = Field(True, description="GPU search with fp16 lookup tables (ivfpq)")


class DatastoreSpec(Section):
    """How to build one datastore: which corpus, which model, which windows, which index."""

    corpus: str = Field(description="JSONL/Parquet with a text column, or testbed:<file>")
    text_field: str = "text"
    prompt_field: str | None = Field(
        None,
        description="chat corpora: render (prompt, text) with the model's chat template and store only "
        "the response tokens, so keys match what the model sees when it answers",
    )
    model: ModelSpec | None = Field(
        None,
        description="the model the datastore is for (its keys are this "
        "model's states); in the goodtriever job, None = target",
    )
    key_type: Literal["mlp_input", "block_output"] = "mlp_input"
    block_size: int = Field(1024, ge=2, description="tokens per window")
    stride: int = Field(512, ge=1, description="only the last `stride` positions of a window are stored")
    batch_docs: int = Field(64, ge=1, description="documents concatenated and windowed together per batch")
    limit: int | None = Field(None, ge=1, description="use only the first N documents")
    resources: Resources = Field(default_factory=lambda: Resources(batch_size=8))
    index: IndexSpec = Field(default_factory=IndexSpec)

    @model_validator(mode="after")
    def _stride_fits(self) -> "DatastoreSpec":
        if self.stride > self.block_size:
            raise ValueError(f"stride ({self.stride}) must be <= block_size ({self.block_size})")
        return self


class KnnLMSpec(Section):
    """kNN-LM decoding (Goodtriever) over one or two datastores (directories built by ``goodtriever build``).

    ``ensemble_order`` gives the role of (toxic store, non-toxic store) in
    ``log_softmax(lm + alpha * (added - subtracted))``; a missing store is replaced by the base LM's
    log-probs. The default ("subtract", "add") steers away from the toxic store; ("add", "subtract") steers
    towards it (a sanity check, or red-teaming). Unlike the original, the option is honoured.
    """

    kind: Literal["knn_lm"] = "knn_lm"
    toxic: str | None = Field(None, description="toxic datastore directory")
    nontoxic: str | None = Field(None, description="non-toxic datastore directory")
    method: Literal["ensemble", "interpolate", "interpolate_discourage"] = "ensemble"
    ensemble_order: tuple[Role, Role] = Field(("subtract", "add"), description="roles of (toxic, nontoxic)")
    k: int = Field(1024, ge=1)
    temperature: float = Field(100.0, gt=0.0, description="T_knn in softmax(-d / T); larger is flatter")
    alpha: float = Field(2.0, description="ensemble strength")
    lmbda: float = Field(0.25, gt=0.0, lt=1.0, description="interpolation weight (interpolate methods only)")
    filter_p: float = Field(
        0.9, ge=0.0, le=1.0, description="top-p filter of the base LM before the ensemble (0 or 1 disables)"
    )
    recompute_dists: bool = Field(False, description="exact L2 from the stored keys instead of PQ distances")
    nprobe: int | None = Field(None, ge=1, description="override the datastore's nprobe")
    gpu: bool | None = Field(None, description="faiss search on GPU: None = when available")

    @model_validator(mode="after")
    def _stores(self) -> "KnnLMSpec":
        if self.toxic is None and self.nontoxic is None:
            raise ValueError("knn_lm needs at least one datastore: set toxic and/or nontoxic")
        if self.method != "ensemble" and self.toxic is not None and self.nontoxic is not None:
            raise ValueError(
                f"method {self.method!r} uses one datastore; set only toxic or nontoxic "
                "(or use method 'ensemble')"
            )
        if self.ensemble_order[0] == self.ensemble_order[1]:
            raise ValueError("ensemble_order must be ('subtract', 'add') or ('add', 'subtract')")
        return self


class DExpertsSpec(Section):
    """DExperts: ``log_softmax(filter_p(log_softmax(z)) + alpha * (z_expert - z_anti_expert))``.

    Like the original DExperts (and unlike Goodtriever's re-implementation) there is no second nucleus
    inside the processor; the sampling ``top_p`` of the generation params is the only later truncation.
    """

    kind: Literal["dexperts"] = "dexperts"
    expert: ModelSpec = Field(description="the expert (non-toxic) LM; must share the base model's vocabulary")
    anti_expert: ModelSpec = Field(description="the anti-expert (toxic) LM")
    alpha: float = 2.0
    filter_p: float = Field(0.9, ge=0.0, le=1.0, description="top-p filter of the base LM (0 or 1 disables)")


MitigationSpec = Annotated[Union[KnnLMSpec, DExpertsSpec], Field(discriminator="kind")]
MITIGATION_KINDS = tuple(
    get_args(m.model_fields["kind"].annotation)[0] for m in get_args(get_args(MitigationSpec)[0])
)
_ADAPTER: TypeAdapter = TypeAdapter(MitigationSpec)


def parse_mitigation(data: Any, source: str = "mitigation") -> KnnLMSpec | DExpertsSpec:
    """Validate a dict (or pass a spec through) into a ``KnnLMSpec`` / ``DExpertsSpec``."""
    if isinstance(data, (KnnLMSpec, DExpertsSpec)):
        return data
    return parse_kind(_ADAPTER, MITIGATION_KINDS, data, source)


def resolve_mitigation_names(spec: KnnLMSpec | DExpertsSpec) -> KnnLMSpec | DExpertsSpec:
    """Map ``testbed:`` names in a mitigation to local paths (for job files and the Serve app only)."""
    # lazy: loads sklearn only when called
    from forewarn.names import resolve_model, resolve_path

    spec = spec.model_copy(deep=True)
    if isinstance(spec, DExpertsSpec):
        spec.expert.path = resolve_model(spec.expert.path)
        spec.anti_expert.path = resolve_model(spec.anti_expert.path)
    else:
        spec.toxic = resolve_path(spec.toxic) if spec.toxic else None
        spec.nontoxic = resolve_path(spec.nontoxic) if spec.nontoxic else None
    return spec


class SystemSpec(Section):
    """One decoding system of the evaluation: the target plus zero or more mitigations (processors)."""

    mitigations: list[MitigationSpec] = Field(default_factory=list, description="empty = the raw model")

    @field_validator("mitigations", mode="before")
    @classmethod
    def _kinds(cls, v: Any) -> Any:
        for i, m in enumerate(v or []):
            if isinstance(m, dict) and m.get("kind") not in MITIGATION_KINDS:
                raise ValueError(
                    f"mitigations[{i}].kind = {m.get('kind')!r}: expected one of "
                    f"{', '.join(MITIGATION_KINDS)}"
                )
        return v
