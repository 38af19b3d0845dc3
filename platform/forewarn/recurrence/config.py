"""Config sections of the recurrence capability: trigger search, recurrence rules, the Tune sweep, the detector.

Defaults follow the reference (RecurrentGenerator: 50 x 8 tokens, top 20 % kept, half/half crossover,
10 % mutation, 1000 iterations); the packaged YAMLs (``defaults/recurrence_*.yaml``) shrink them for the
testbed. Fields that the original had but ignored (``rep_penalty``) or that contradicted each other
(``top_k 1`` with a temperature) do not exist here: sampling is one ``GenerationParams``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from forewarn.config import GenerationParams, JobConfig, ModelSpec, RoleConfig, Section


def _target() -> RoleConfig:
    return RoleConfig(model=ModelSpec(path="testbed:target"))


class DetectSection(Section):
    """How a generation is judged recurrent (see ``recurrence/cycles.py``)."""

    max_period: int = Field(64, ge=1, description="longest cycle period (tokens) the detector looks for")
    min_repeats: float = Field(3.0, ge=1.5, description="copies of the period needed to call it a cycle")
    cap_margin: int = Field(
        20, ge=0, description="original length rule: recurrent iff tokens >= max_new - margin"
    )
    ngram: int = Field(4, ge=2, description="n of the repeated-n-gram count used by the cycle-aware fitness")
    min_loop_share: float = Field(
        0.7,
        gt=0.0,
        le=1.0,
        description="a response whose second half repeats "
        "n-grams seen before at this share loops, even without an exact period",
    )
    min_loop_tokens: int = Field(24, ge=4, description="shorter responses never count as loops by share")


class SearchSection(Section):
    """The evolutionary trigger search (and its random-search baseline)."""

    pool_size: int = Field(50, ge=2, description="individuals per iteration")
    input_len: int = Field(8, ge=2, description="token ids per individual")
    iterations: int = Field(1000, ge=1)
    max_evaluations: int | None = Field(None, ge=1, description="budget in target generations (None: no cap)")
    selection_rate: float = Field(0.2, gt=0.0, lt=1.0, description="share of the pool kept as parents")
    crossover: Literal["half", "one_point", "two_point", "uniform"] = Field(
        "half", description="half: first half of a + second half of b (the original); uniform: per position"
    )
    mutation_rate: float = Field(0.1, ge=0.0, le=1.0, description="ceil(input_len x rate) positions redrawn")
    immigrant_rate: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="share of each new pool drawn fresh at "
        "random (random immigrants: keeps a converged pool exploring)",
    )
    swap_rate: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="chance a child also swaps two positions: "
        "reorders tokens it already has (not in the original, which only redraws)",
    )
    fitness: Literal["tokens", "cycle"] = Field(
        "cycle",
        description="tokens: tokens generated (the original); cycle: tokens + weight x repeated tokens",
    )
    cycle_weight: float = Field(
        1.0, ge=0.0, description="weight of repeated n-gram tokens in the cycle fitness"
    )
    goal: Literal["length", "cycle", "both"] = Field(
        "both",
        description="when a response counts as a hit: length (original), cycle, both (a loop to the cap)",
    )
    terminate_if_found: bool = Field(True, description="stop at the first iteration that hits the goal")
    cache_evaluations: bool = Field(
        True,
        description="reuse the result of an already evaluated sequence "
        "(exact for greedy decoding; the original re-generated every survivor)",
    )
    num_best: int = Field(4, ge=1, description="best individuals logged per iteration")
    exclude_special_tokens: bool = Field(True, description="never draw special tokens (chat markers, EOS)")
    tokenizer: str | None = Field(None, description="tokenizer for decoding ids (default: the target's path)")
    contexts: list[str] = Field(
        default_factory=list,
        description="prompts with a '{trigger}' slot: each "
        "individual is tried in every context (a universal trigger); empty: the "
        "decoded ids alone are the prompt (the original)",
    )
    hit_fraction: float = Field(1.0, gt=0.0, le=1.0, description="share of contexts that must hit the goal")

    @model_validator(mode="after")
    def _check(self) -> "SearchSection":
        if int(self.pool_size * self.selection_rate) < 1:
            raise ValueError(
                f"pool_size x selection_rate = {self.pool_size} x {self.selection_rate} keeps no "
                "parent; raise one of them so at least one individual survives"
            )
        if (
            int(self.pool_size * self.selection_rate) + int(self.pool_size * self.immigrant_rate)
            >= self.pool_size
        ):
            raise ValueError("selection_rate + immigrant_rate leave no room for children; lower one of them")
        bad = [c for c in self.contexts if "{trigger}" not in c]
        if bad:
            raise ValueError(
                f"search.contexts: {bad[0]!r} has no '{{trigger}}' slot; write where the searched "
                "tokens go, e.g. 'What is {trigger} made of?'"
            )
        return self


class RecurrenceSearchConfig(JobConfig):
    """The ``recurrence_search`` job: GA and random search with the same budget, over several seeds."""

    target: RoleConfig = Field(default_factory=_target)
    params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=2000))
    search: SearchSection = Field(default_factory=SearchSection)
    detect: DetectSection = Field(default_factory=DetectSection)
    methods: list[Literal["ga", "random"]] = Field(default_factory=lambda: ["ga", "random"])
    seeds: list[int] = Field(
        default_factory=lambda: [0],
        min_length=1,
        description="one search per seed and method; medians are reported",
    )


class TuneSection(Section):
    """The Ray Tune sweep over search hyper-parameters (``tune/trigger_search.py``)."""

    num_samples: int = Field(8, ge=1, description="trials")
    max_concurrent: int = Field(2, ge=1, description="trials running at once")
    searcher: Literal["optuna", "random"] = "optuna"
    scheduler: Literal["asha", "fifo"] = "asha"
    grace_period: int = Field(
        2, ge=1, description="ASHA: iterations every trial gets before it can be stopped"
    )
    pool_size: list[int] = Field(default_factory=lambda: [16, 32, 50])
    input_len: list[int] = Field(default_factory=lambda: [4, 8])
    mutation_rate: tuple[float, float] = Field((0.05, 0.4), description="uniform range")
    crossover: list[str] = Field(default_factory=lambda: ["half", "one_point", "uniform"])
    fitness: list[str] = Field(default_factory=lambda: ["tokens", "cycle"])
    trial_cpus: float = Field(1.0, gt=0, description="CPUs of each trial's target actor")
    experiment: str = Field("forewarn-recurrence-sweep", description="MLflow experiment of the trials")


class RecurrenceSweepConfig(JobConfig):
    """A Tune sweep: each trial is one GA run on its own target actor."""

    target: RoleConfig = Field(default_factory=_target)
    params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=2000))
    search: SearchSection = Field(default_factory=SearchSection)
    detect: DetectSection = Field(default_factory=DetectSection)
    tune: TuneSection = Field(default_factory=TuneSection)


class FeatureSection(Section):
    """Detector features from the target's internals over the first ``detection_length`` response tokens."""

    kind: Literal["mlp_activation", "hidden_state"] = Field(
        "mlp_activation",
        description="mlp_activation: on/off agreement of MLP units (the reference); "
        "hidden_state: cosine similarity of last-layer hidden states (cheaper)",
    )
    detection_length: int = Field(400, ge=8, description="response tokens the feature looks at")


class ClassifierSection(Section):
    """The reference MLP and its training (section 5 of the reference)."""

    hidden: list[int] = Field(default_factory=lambda: [120, 30, 10])
    lr: float = Field(1e-3, gt=0, description="the reference used 1e-4")
    weight_decay: float = Field(0.02, ge=0)
    batch_size: int = Field(400, ge=1)
    epochs: int = Field(300, ge=1, description="the reference used 500")
    # The reference's (1000, 1) made the MLP call nothing recurrent on the testbed (recall 0 at FPR 0, 300-500
    # epochs at lr 1e-4 or 1e-3); (10, 1) kept FPR 0 with recall 0.98. Set (1000, 1) to reproduce it.
    class_weights: tuple[float, float] = Field(
        (10.0, 1.0),
        description="loss weight of (non-recurrent, "
        "recurrent) samples: a false positive cuts off a healthy answer",
    )
    train_fraction: float = Field(0.75, gt=0, lt=1)
    threshold: float = Field(0.5, gt=0, lt=1)


class DetectorDataSection(Section):
    """Where detector samples come from."""

    search_runs: list[str] = Field(default_factory=list, description="output dirs of recurrence_search runs")
    prompt_files: list[str] = Field(
        default_factory=lambda: [
            "testbed:heldout_benign",
            "testbed:heldout_planted",
            "testbed:trigger_prompts",
        ],
        description="prompt files (JSONL/Parquet/txt or testbed:<artifact>) generated through the target",
    )
    temperatures: list[float] = Field(
        default_factory=lambda: [0.0, 1.0],
        description="one generation per prompt and temperature (0: greedy)",
    )
    label_rule: Literal["length", "cycle", "both"] = Field(
        "cycle", description="which verdict labels a sample"
    )
    max_per_class: int = Field(500, ge=1)


class RecurrenceDetectorConfig(JobConfig):
    """The ``recurrence_detector`` job: collect samples, extract features, train and evaluate the MLP."""

    target: RoleConfig = Field(default_factory=_target)
    params: GenerationParams = Field(default_factory=lambda: GenerationParams(max_new_tokens=2000))
    detect: DetectSection = Field(default_factory=DetectSection)
    data: DetectorDataSection = Field(default_factory=DetectorDataSection)
    features: FeatureSection = Field(default_factory=FeatureSection)
    classifier: ClassifierSection = Field(default_factory=ClassifierSection)
