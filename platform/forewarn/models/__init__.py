"""Generation backends behind one contract (see ``base.Generator``).

One plug-in pattern, as for judges, decoding mitigations and stop detectors: the config names a kind
(``ModelSpec.backend``, a ``Literal``) and :data:`BUILDERS` maps each kind to the function that builds it.
Adding a backend is a module with a ``Generator``, one literal value and one builder here. Builders import
their backend lazily: torch/transformers, vLLM and the openai client load only for the backend in use.
"""

from __future__ import annotations

from collections.abc import Callable

from forewarn.config import ModelSpec
from forewarn.errors import ConfigError
from forewarn.models.base import Chat, Completion, Generator, Prompt


def _hf(spec: ModelSpec) -> Generator:
    from forewarn.models.hf import HFGenerator  # lazy: torch + transformers

    return HFGenerator(spec)


def _vllm(spec: ModelSpec) -> Generator:
    from forewarn.models.vllm import VLLMGenerator  # lazy: vLLM is optional (cpu-engine / gpu extras)

    return VLLMGenerator(spec)


def _openai(spec: ModelSpec) -> Generator:
    from forewarn.models.openai_api import OpenAIGenerator  # lazy: the HTTP client stack

    return OpenAIGenerator(spec)


BUILDERS: dict[str, Callable[[ModelSpec], Generator]] = {"hf": _hf, "vllm": _vllm, "openai": _openai}


def load_generator(spec: ModelSpec) -> Generator:
    """Build the backend ``spec.backend`` names; heavy imports happen only for the chosen one."""
    build = BUILDERS.get(spec.backend)
    if build is None:
        raise ConfigError(f"model.backend={spec.backend!r}: expected one of {', '.join(sorted(BUILDERS))}")
    return build(spec)


__all__ = ["BUILDERS", "Chat", "Completion", "Generator", "Prompt", "load_generator"]
