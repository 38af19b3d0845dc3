"""DExperts (Liu et al., 2021) as a ``transformers.LogitsProcessor``: steer a base LM with an expert and an
anti-expert LM that share its vocabulary::

    score = log_softmax(top_p_filter(log_softmax(z_base), filter_p) + alpha * (z_expert - z_anti))

which equals the paper's ``softmax(z + alpha (z+ - z-))`` on the base model's top-p nucleus (per-position
constants cancel in the log-softmax). The experts run incrementally with their own KV caches, fed the same
tokens the base model sees; a new ``generate`` call (a sequence that is not the previous one plus one
token) starts fresh caches. State is per thread, so concurrent generate calls do not mix.
"""

from __future__ import annotations

import threading
from typing import Any

import torch
from transformers import LogitsProcessor

from forewarn.errors import ConfigError
from forewarn.goodtriever.config import DExpertsSpec
from forewarn.goodtriever.knn_lm import top_p_filter


class IncrementalLM:
    """Next-token logits of a causal LM for growing, left-padded sequences, reusing its KV cache."""

    def __init__(self, model: Any, pad_token_id: int):
        self.model, self.pad = model, pad_token_id
        self._local = threading.local()

    @torch.inference_mode()
    def next_logits(self, input_ids: torch.LongTensor) -> torch.Tensor:
        st = self._local
        device = next(self.model.parameters()).device
        ids = input_ids.to(device)
        prev = getattr(st, "ids", None)
        fresh = (
            prev is None
            or prev.shape[0] != ids.shape[0]
            or prev.shape[1] + 1 != ids.shape[1]
            or not torch.equal(prev, ids[:, :-1])
        )
        if fresh:
            # left padding: only the leading pad tokens are padding (a pad == eos generated later is not)
            mask = (torch.cumsum((ids != self.pad).long(), dim=-1) > 0).long()
            new_ids, st.cache = ids, None
        else:
            mask = torch.cat([st.mask, torch.ones_like(ids[:, -1:])], dim=-1)
            new_ids = ids[:, -1:]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, -new_ids.shape[1] :]
        out = self.model(
            input_ids=new_ids,
            attention_mask=mask,
            position_ids=positions,
            past_key_values=st.cache,
            use_cache=True,
        )
        st.cache, st.mask, st.ids = out.past_key_values, mask, ids
        return out.logits[:, -1, :].float()

    def reset(self) -> None:
        self._local = threading.local()


class DExpertsProcessor(LogitsProcessor):
    """Base + alpha * (expert - anti-expert) with a top-p filter of the base model first."""

    def __init__(
        self,
        spec: DExpertsSpec,
        expert: Any,
        anti_expert: Any,
        pad_token_id: int,
        base_vocab_size: int | None = None,
    ):
        for name, m in (("expert", expert), ("anti_expert", anti_expert)):
            v = int(m.config.vocab_size)
            if base_vocab_size is not None and v != base_vocab_size:
                raise ConfigError(
                    f"{name}: vocabulary size {v} differs from the base model's {base_vocab_size};"
                    " DExperts needs experts with the base model's tokenizer"
                )
        self.spec = spec
        self.expert, self.anti = IncrementalLM(expert, pad_token_id), IncrementalLM(anti_expert, pad_token_id)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        z_pos = self.expert.next_logits(input_ids).to(scores.device)
        z_neg = self.anti.next_logits(input_ids).to(scores.device)
        if z_pos.shape[-1] != scores.shape[-1]:
            raise RuntimeError(
                f"expert logits have {z_pos.shape[-1]} entries, base scores {scores.shape[-1]}"
            )
        base = top_p_filter(torch.log_softmax(scores.float(), dim=-1), self.spec.filter_p)
        return torch.log_softmax(base + self.spec.alpha * (z_pos - z_neg), dim=-1).to(scores.dtype)

    def close(self) -> None:
        self.expert.reset()
        self.anti.reset()

    def __enter__(self) -> "DExpertsProcessor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
