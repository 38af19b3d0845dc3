"""Generation backends behind one contract (see ``base.Generator``)."""

from __future__ import annotations

from forewarn.config import ModelSpec
from forewarn.models.base import Chat, Completion, Generator, Prompt


def load_generator(spec: ModelSpec) -> Generator:
    """Build the backend ``spec.backend`` names; heavy imports happen only for the chosen one."""
    if spec.backend == "hf":
        from forewarn.models.hf import HFGenerator

        return HFGenerator(spec)
    if spec.backend == "vllm":
        from forewarn.models.vllm import VLLMGenerator

        return VLLMGenerator(spec)
    if spec.backend == "openai":
        from forewarn.models.openai_api import OpenAIGenerator

        return OpenAIGenerator(spec)
    raise ValueError(f"model.backend={spec.backend!r}: expected one of hf, vllm, openai")


__all__ = ["Chat", "Completion", "Generator", "Prompt", "load_generator"]
