"""The contrastive decoder: one object holds both models, samples continuations and scores them under both.

Two decoding modes (``DecoderConfig.mode``):

- ``score``: sample from one model (``sample_from``) and score the result under both;
- ``combine``: true contrastive decoding, sampling each token from ``w_s p_start + w_c p_comparison``
  (optionally limited to the starting model's top-p nucleus and gated by similarity).

Either way the finished sequences (prompt + generation) go through one forward pass of each model with an
attention mask, and :mod:`forewarn.contrastive.divergence` turns the logits into per-token divergences
over the generated tokens only (padding never counts), per-sequence mean and max, and perplexity under
each model over the same positions. Both models must share one tokenizer; this is checked up front.

The models stay wherever ``ModelSpec`` puts them (same device, or each sharded with ``device_map``);
tensors move to each model's input device and logits come back to the starting model's device.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from forewarn.config import ModelSpec
from forewarn.contrastive.config import DecoderConfig
from forewarn.contrastive.divergence import (
    combine_logits,
    divergence_name,
    perplexity,
    scored_mask,
    token_divergence,
    token_nll,
)
from forewarn.errors import ConfigError
from forewarn.models.base import Prompt
from forewarn.models.hf import HFGenerator, render_prompt
from forewarn.records import DivergenceEvidence


@dataclass
class DecodedSample(DivergenceEvidence):
    """The evidence of one continuation (:class:`forewarn.records.DivergenceEvidence`, whose fields
    ``include_prompt`` governs), and the index of its prompt in the decoded batch."""

    prompt_index: int
    extra: dict = field(default_factory=dict)


def check_same_tokenizer(
    tok_s, tok_c, start_name: str = "start", comparison_name: str = "comparison"
) -> None:
    """Fail clearly unless both tokenizers map every token to the same id (same special tokens too)."""
    vs, vc = tok_s.get_vocab(), tok_c.get_vocab()
    problem = None
    if len(vs) != len(vc):
        problem = f"vocabulary sizes differ ({len(vs)} vs {len(vc)})"
    else:
        diff = next((t for t, i in vs.items() if vc.get(t) != i), None)
        if diff is not None:
            problem = f"token {diff!r} has id {vs[diff]} in one and {vc.get(diff)} in the other"
    for name in ("eos_token_id", "pad_token_id"):
        if problem is None and getattr(tok_s, name) != getattr(tok_c, name):
            problem = f"{name} differs ({getattr(tok_s, name)} vs {getattr(tok_c, name)})"
    if problem:
        raise ConfigError(
            f"comparison.model.path={comparison_name!r} does not share the tokenizer of start.model.path="
            f"{start_name!r}: {problem}. Contrastive decoding compares next-token distributions over one "
            "vocabulary; pick two models of the same family (a base model and its fine-tune)."
        )


def _device(model: torch.nn.Module) -> torch.device:
    return model.get_input_embeddings().weight.device


def _prompt_text(p: Prompt) -> str:
    if isinstance(p, str):
        return p
    users = [m.get("content", "") for m in p if m.get("role") == "user"]
    return users[-1] if users else ""


class ContrastiveDecoder:
    """Holds a starting and a comparison model; decodes, scores, ranks. Plain Python: wrap it in an actor."""

    def __init__(self, start: HFGenerator, comparison: HFGenerator, cfg: DecoderConfig | None = None):
        self.start, self.comparison = start, comparison
        self.cfg = cfg or DecoderConfig()
        check_same_tokenizer(start.tokenizer, comparison.tokenizer, start.name, comparison.name)
        self.tok = start.tokenizer
        self.tok.padding_side = "left"
        self.tok.truncation_side = "left"
        self._rng = torch.Generator(device="cpu")
        self._rng.manual_seed(self.cfg.seed if self.cfg.seed is not None else torch.seed())

    @classmethod
    def from_specs(
        cls, start: ModelSpec, comparison: ModelSpec, cfg: DecoderConfig | None = None
    ) -> "ContrastiveDecoder":
        """Load both models through the ``hf`` backend (each spec may shard with ``device_map``)."""
        for role, spec in (("start", start), ("comparison", comparison)):
            if spec.backend != "hf":
                raise ConfigError(
                    f"{role}.model.backend={spec.backend!r}: the contrastive decoder needs the "
                    "logits of both models, so both must use backend 'hf'"
                )
        return cls(HFGenerator(start), HFGenerator(comparison), cfg)

    @property
    def divergence_name(self) -> str:
        return divergence_name(self.cfg.start_weight, self.cfg.comparison_weight, self.cfg.metric)

    # ------------------------------------------------------------ public API

    def decode(self, prompts: Sequence[Prompt], n: int | None = None) -> list[DecodedSample]:
        """Sample ``n`` (default ``generations_per_prompt``) continuations per prompt and score them.

        Results come back prompt by prompt, sample by sample (never sorted: block means stay aligned).
        """
        n = n or self.cfg.generations_per_prompt
        out: list[DecodedSample] = []
        for lo in range(0, len(prompts), self.cfg.batch_size):
            chunk = list(prompts[lo : lo + self.cfg.batch_size])
            ids, am = self._encode(chunk)
            ids, am = ids.repeat_interleave(n, 0), am.repeat_interleave(n, 0)
            gen = self._sample(ids, am)
            rows = self._score(ids, am, gen)
            for r, row in enumerate(rows):
                i, k = divmod(r, n)
                out.append(self._sample_row(lo + i, k, chunk[i], row))
        return out

    def score(self, prompts: Sequence[Prompt], continuations: Sequence[str]) -> list[DecodedSample]:
        """Teacher-forced scoring of given continuations (no sampling): the same evidence as ``decode``."""
        if len(prompts) != len(continuations):
            raise ValueError(f"{len(prompts)} prompts but {len(continuations)} continuations")
        out: list[DecodedSample] = []
        for lo in range(0, len(prompts), self.cfg.batch_size):
            chunk = list(prompts[lo : lo + self.cfg.batch_size])
            ids, am = self._encode(chunk)
            conts = list(continuations[lo : lo + self.cfg.batch_size])
            enc = [self.tok(c, add_special_tokens=False)["input_ids"] for c in conts]
            width = max(1, max(len(e) for e in enc))
            gen = torch.full((len(enc), width), self.tok.pad_token_id, dtype=torch.long)
            lens = torch.tensor([len(e) for e in enc])
            for r, e in enumerate(enc):
                gen[r, : len(e)] = torch.tensor(e, dtype=torch.long)
            rows = self._score(ids, am, gen.to(ids.device), gen_lengths=lens)
            for i, row in enumerate(rows):
                out.append(self._sample_row(lo + i, 0, chunk[i], row))
        return out

    # ------------------------------------------------------------ internals

    def _encode(self, prompts: list[Prompt]) -> tuple[torch.Tensor, torch.Tensor]:
        texts = [render_prompt(self.tok, p, self.start.spec.use_chat_template) for p in prompts]
        enc = self.tok(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.cfg.max_prompt_tokens,
            add_special_tokens=False,
        )
        dev = _device(self.start.model)
        return enc["input_ids"].to(dev), enc["attention_mask"].to(dev)

    def _warpers(self) -> LogitsProcessorList:
        c, procs = self.cfg, LogitsProcessorList()
        if c.temperature == 0.0:
            return procs  # greedy: argmax, no warpers
        if c.temperature != 1.0:
            procs.append(TemperatureLogitsWarper(c.temperature))
        if c.top_k:
            procs.append(TopKLogitsWarper(c.top_k))
        if c.top_p < 1.0:
            procs.append(TopPLogitsWarper(c.top_p))
        return procs

    @torch.inference_mode()
    def _sample(self, ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
        """Generated ids ``[B, T]`` (right-padded with pad after each row's end token); KV caches per model."""
        c = self.cfg
        combine = c.mode == "combine"
        if combine:
            models = [self.start.model, self.comparison.model]
        else:
            models = [(self.start if c.sample_from == "start" else self.comparison).model]
        eos, pad = self.tok.eos_token_id, self.tok.pad_token_id
        warpers = self._warpers()
        caches: list = [None] * len(models)
        pos = (am.long().cumsum(-1) - 1).clamp(min=0)
        step_ids, step_pos, all_ids = ids, pos, ids
        finished = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
        gen: list[torch.Tensor] = []
        for step in range(c.max_new_tokens):
            last = []
            for k, m in enumerate(models):
                dev = _device(m)
                o = m(
                    input_ids=step_ids.to(dev),
                    attention_mask=am.to(dev),
                    position_ids=step_pos.to(dev),
                    past_key_values=caches[k],
                    use_cache=True,
                )
                caches[k] = o.past_key_values
                last.append(o.logits[:, -1].float().to(ids.device))
            z = (
                combine_logits(
                    last[0], last[1], c.start_weight, c.comparison_weight, c.start_top_p, c.similarity_gating
                )
                if combine
                else last[0]
            )
            if step < c.min_new_tokens and eos is not None:
                z[:, eos] = float("-inf")
            if c.temperature == 0.0:
                nxt = z.argmax(dim=-1)
            else:
                probs = torch.softmax(warpers(all_ids, z), dim=-1)
                nxt = torch.multinomial(probs.cpu(), 1, generator=self._rng).squeeze(-1).to(ids.device)
            nxt = torch.where(finished, torch.full_like(nxt, pad), nxt)
            gen.append(nxt)
            finished |= nxt == eos
            all_ids = torch.cat([all_ids, nxt[:, None]], dim=1)
            am = torch.cat([am, torch.ones_like(nxt[:, None])], dim=1)
            step_ids, step_pos = nxt[:, None], step_pos[:, -1:] + 1
            if bool(finished.all()):
                break
        return torch.stack(gen, dim=1)

    def _gen_mask(self, gen: torch.Tensor, gen_lengths: torch.Tensor | None) -> torch.Tensor:
        """Real generated tokens: up to and including the first end token (or the given lengths)."""
        if gen_lengths is not None:
            return (
                torch.arange(gen.shape[1], device=gen.device)[None, :] < gen_lengths.to(gen.device)[:, None]
            )
        is_end = gen == self.tok.eos_token_id
        before_end = (is_end.long().cumsum(-1) - is_end.long()) == 0
        return before_end

    @torch.inference_mode()
    def _score(
        self, ids: torch.Tensor, am: torch.Tensor, gen: torch.Tensor, gen_lengths: torch.Tensor | None = None
    ) -> list[dict]:
        """One masked forward pass of each model over prompt + generation -> per-row evidence."""
        c = self.cfg
        full = torch.cat([ids, gen], dim=1)
        full_am = torch.cat([am, self._gen_mask(gen, gen_lengths).to(am.dtype)], dim=1)
        pos = (full_am.long().cumsum(-1) - 1).clamp(min=0)
        logits = []
        for m in (self.start.model, self.comparison.model):
            dev = _device(m)
            logits.append(
                m(input_ids=full.to(dev), attention_mask=full_am.to(dev), position_ids=pos.to(dev))
                .logits.float()
                .to(full.device)
            )
        z_s, z_c = logits
        div = token_divergence(
            z_s[:, :-1], z_c[:, :-1], c.start_weight, c.comparison_weight, c.metric, c.distribution
        )
        mask = scored_mask(full_am, ids.shape[1], c.include_prompt)
        ppl_s = perplexity(token_nll(z_s, full), mask)
        ppl_c = perplexity(token_nll(z_c, full), mask)
        prompt_len = ids.shape[1]
        rows = []
        for b in range(full.shape[0]):
            pos_b = mask[b].nonzero().squeeze(-1)
            tok_ids = full[b, pos_b + 1].tolist()
            divs = div[b, pos_b].tolist()
            gen_ids = gen[b][
                self._gen_mask(gen[b : b + 1], None if gen_lengths is None else gen_lengths[b : b + 1])[0]
            ].tolist()
            rows.append(
                dict(
                    token_ids=tok_ids,
                    token_divergences=divs,
                    n_prompt_tokens=int((pos_b + 1 < prompt_len).sum()),
                    text=self.tok.decode(gen_ids, skip_special_tokens=True),
                    divergence_mean=float(sum(divs) / len(divs)) if divs else math.nan,
                    divergence_max=float(max(divs)) if divs else math.nan,
                    ppl_start=float(ppl_s[b]),
                    ppl_comparison=float(ppl_c[b]),
                )
            )
        return rows

    def _sample_row(self, prompt_index: int, sample: int, prompt: Prompt, row: dict) -> DecodedSample:
        tokens = self.tok.batch_decode([[t] for t in row["token_ids"]], skip_special_tokens=False)
        return DecodedSample(
            prompt_index=prompt_index, sample=sample, prompt=_prompt_text(prompt), tokens=tokens, **row
        )


# ---------------------------------------------------------------- block statistics and ranking


def prompt_means(samples: Sequence[DecodedSample]) -> dict[int, float]:
    """Mean divergence per prompt over its samples (computed on the unsorted list, keyed by prompt index)."""
    sums: dict[int, list[float]] = {}
    for s in samples:
        if not math.isnan(s.divergence_mean):
            sums.setdefault(s.prompt_index, []).append(s.divergence_mean)
    return {i: sum(v) / len(v) for i, v in sums.items()}


def top_k(
    samples: Sequence[DecodedSample],
    k: int | None = None,
    key: str = "divergence_mean",
    descending: bool = True,
) -> list[DecodedSample]:
    """Samples sorted by ``key`` (NaN last), the first ``k`` of them (all when k is None)."""

    def sort_key(s: DecodedSample) -> tuple[bool, float]:
        v = getattr(s, key)
        return (math.isnan(v), -v if descending else v)

    ranked = sorted(samples, key=sort_key)
    return ranked if k is None else ranked[:k]
