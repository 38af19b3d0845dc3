"""The ``hf`` backend: any transformers causal LM, batched with left padding.

Supports chat templates, dtype, seeds, ``device_map`` sharding over GPUs, n samples per prompt, stop
strings, per-token log-probs, and hooks for logits processors (kNN-LM, DExperts, stopping criteria)
that capabilities pass per call.

Per-row seeds (``generate(..., seeds=[...])``) keep one batched ``model.generate`` call: each prompt is
expanded into its n sample rows, decoding runs greedy over logits that :class:`SeededSampler` (the last
logits processor) has reduced to one token per row, drawn from that row's own ``torch.Generator``
after temperature, top-k and top-p. A row's draws depend on its seed and its own logits only, so its
samples are the same batched alone or with 63 others.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LogitsProcessor,
    LogitsProcessorList,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
)

from forewarn.config import GenerationParams, ModelSpec
from forewarn.errors import ModelNotFound
from forewarn.models.base import Completion, Prompt, apply_stop, as_chat, check_seeds, sample_seed

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16, "auto": "auto"}


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def load_hf(spec: ModelSpec) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load model and tokenizer from a local folder or the local HF cache (never downloads)."""
    path = spec.path
    local_only = not Path(path).exists()
    try:
        tok = AutoTokenizer.from_pretrained(
            path, trust_remote_code=spec.trust_remote_code, local_files_only=local_only
        )
        kwargs = dict(
            dtype=DTYPES[spec.dtype], trust_remote_code=spec.trust_remote_code, local_files_only=local_only
        )
        if spec.device_map:
            kwargs["device_map"] = spec.device_map
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except OSError as e:
        raise ModelNotFound(
            f"model.path={path!r}: not a local HF folder and not in the local HF cache ({e}). "
            "Point it at a folder with config.json and weights, or a testbed name such as testbed:target."
        ) from None
    if not spec.device_map:
        model.to(resolve_device(spec.device))
    model.eval()
    tok.padding_side = "left"  # batched generation needs left padding
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return model, tok


def render_prompt(tok: PreTrainedTokenizerBase, prompt: Prompt, use_chat_template: bool) -> str:
    """Render a prompt to text: chats through the chat template, strings as they are (or as a user turn)."""
    if isinstance(prompt, str) and not use_chat_template:
        return prompt
    if tok.chat_template is None:
        if isinstance(prompt, str):
            return prompt
        raise ValueError("this tokenizer has no chat template; pass plain string prompts")
    # transformers 5: tokenize=True returns a mapping, so render text and tokenize separately.
    return tok.apply_chat_template(as_chat(prompt), tokenize=False, add_generation_prompt=True)


class _StopOnStrings(StoppingCriteria):
    """Stop a row once any stop string appears in its generated text (checked on the decoded tail)."""

    def __init__(self, tok: PreTrainedTokenizerBase, stop: Sequence[str], prompt_len: int):
        self.tok, self.stop, self.prompt_len = tok, list(stop), prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs) -> torch.BoolTensor:
        gen = input_ids[:, self.prompt_len :]
        texts = self.tok.batch_decode(gen[:, -32:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


class SeededSampler(LogitsProcessor):
    """Sample one token per row from the row's own generator; every other token's score becomes -inf.

    Used as the last logits processor of a greedy ``generate``: argmax then picks the sampled token. The
    warping follows transformers' sampling order (temperature, top-k, top-p with at least one token
    kept). Each step draws exactly one uniform per row, finished or not, so a row's stream is fixed by
    its seed. ``logprobs`` collects the sampled tokens' log-probabilities under the warped distribution
    (what ``output_scores`` gives for unseeded sampling).
    """

    def __init__(self, seeds: Sequence[int], params: GenerationParams, device: torch.device):
        # one uniform per row and step, drawn up front from the row's own generator
        self.uniforms = torch.stack(
            [torch.rand(params.max_new_tokens, generator=torch.Generator().manual_seed(s)) for s in seeds]
        ).to(device)
        self.temperature, self.top_k, self.top_p = params.temperature, params.top_k, params.top_p
        self.step = 0
        self.logprobs: list[torch.Tensor] = []

    def warp(self, scores: torch.Tensor) -> torch.Tensor:
        scores = scores / self.temperature
        if self.top_k and self.top_k < scores.shape[-1]:
            kth = torch.topk(scores, self.top_k, dim=-1).values[:, -1:]
            scores = scores.masked_fill(scores < kth, float("-inf"))
        if self.top_p < 1.0:
            sorted_scores, order = torch.sort(scores, dim=-1, descending=False)
            cum = sorted_scores.softmax(dim=-1).cumsum(dim=-1)
            drop = cum <= 1 - self.top_p
            drop[:, -1] = False  # keep at least the most likely token
            scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
        return scores

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        logp = torch.log_softmax(self.warp(scores.float()), dim=-1)
        cdf = logp.exp().cumsum(dim=-1)
        target = self.uniforms[:, self.step, None] * cdf[:, -1:]  # inverse CDF: first token with cdf > u
        self.step += 1
        tokens = torch.searchsorted(cdf, target, right=True).clamp(max=scores.shape[-1] - 1)
        self.logprobs.append(logp.gather(1, tokens).squeeze(1))
        return torch.full_like(scores, float("-inf")).scatter(1, tokens, 0.0)


class HFGenerator:
    """Batched generation with a transformers causal LM, loaded once."""

    def __init__(
        self,
        spec: ModelSpec,
        model: PreTrainedModel | None = None,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ):
        self.spec = spec
        self.name = spec.path
        if model is None or tokenizer is None:
            model, tokenizer = load_hf(spec)
        self.model, self.tokenizer = model, tokenizer

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: list[Prompt]) -> dict[str, torch.Tensor]:
        texts = [render_prompt(self.tokenizer, p, self.spec.use_chat_template) for p in prompts]
        self.tokenizer.truncation_side = "left"
        enc = self.tokenizer(
            texts,
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=self.spec.max_input_tokens,
            add_special_tokens=False,
        )
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[Prompt],
        params: GenerationParams,
        seeds: list[int] | None = None,
        logits_processors: Sequence[LogitsProcessor] = (),
        stopping_criteria: Sequence[StoppingCriteria] = (),
    ) -> list[list[Completion]]:
        """Generate ``params.n`` completions per prompt; the result keeps the order of ``prompts``.

        With ``seeds`` (one per prompt) and sampling, prompt i's samples depend on ``seeds[i]`` only (see
        :class:`SeededSampler`); greedy decoding ignores seeds.
        """
        check_seeds(prompts, seeds)
        if not prompts:
            return []
        sample = not params.greedy
        seeded = sample and seeds is not None
        if params.seed is not None and not seeded:
            torch.manual_seed(params.seed)
        enc = self.encode(prompts)
        prompt_len = enc["input_ids"].shape[1]
        stops = list(stopping_criteria)
        if params.stop:
            stops.append(_StopOnStrings(self.tokenizer, params.stop, prompt_len))
        processors = list(logits_processors)
        sampler = None
        if seeded:  # n rows per prompt, decoded greedily over the sampler's one-token scores
            enc = {k: v.repeat_interleave(params.n, dim=0) for k, v in enc.items()}
            sampler = SeededSampler(
                [sample_seed(s, k) for s in seeds for k in range(params.n)], params, self.device
            )
            processors.append(sampler)
        gen_kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample and not seeded,
            num_return_sequences=params.n if sample and not seeded else 1,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            logits_processor=LogitsProcessorList(processors),
            stopping_criteria=StoppingCriteriaList(stops),
            return_dict_in_generate=True,
            output_scores=params.logprobs and not seeded,
            repetition_penalty=params.repetition_penalty,
        )
        if sample and not seeded:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        out = self.model.generate(**enc, **gen_kwargs)
        seqs = out.sequences[:, prompt_len:]
        logps = None
        if params.logprobs and sampler is not None:
            logps = torch.stack(sampler.logprobs, dim=1)
        elif params.logprobs:
            # scores are the processed logits; log-softmax gives the sampling distribution's log-probs.
            step_logps = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
            logps = step_logps.gather(-1, seqs[:, : step_logps.shape[1], None]).squeeze(-1)
        per_prompt = params.n if sample else 1  # greedy decoding gives n identical samples: one, copied
        results: list[list[Completion]] = []
        for i in range(len(prompts)):
            row = [
                self._completion(
                    seqs[i * per_prompt + j], params, None if logps is None else logps[i * per_prompt + j]
                )
                for j in range(per_prompt)
            ]
            if per_prompt < params.n:
                row = [row[0]] + [
                    Completion(
                        c.text,
                        list(c.token_ids),
                        c.finish_reason,
                        None if c.logprobs is None else list(c.logprobs),
                    )
                    for c in row * (params.n - 1)
                ]
            results.append(row)
        return results

    def _completion(
        self, ids: torch.Tensor, params: GenerationParams, logps: torch.Tensor | None
    ) -> Completion:
        ids_list = ids.tolist()
        eos, pad = self.tokenizer.eos_token_id, self.tokenizer.pad_token_id
        n = len(ids_list)
        finish = "length"
        for k, t in enumerate(ids_list):
            if t == eos:
                n, finish = k, "stop"
                break
        if finish == "length" and pad != eos:
            while n > 0 and ids_list[n - 1] == pad:  # rows that stopped early are right-padded
                n -= 1
                finish = "stop"
        ids_list = ids_list[:n]
        text = self.tokenizer.decode(ids_list, skip_special_tokens=True)
        text, hit = apply_stop(text, params.stop)
        if hit:
            finish = "stop"
        lp = None if logps is None else logps[:n].tolist()
        return Completion(text=text, token_ids=ids_list, finish_reason=finish, logprobs=lp)

    @torch.inference_mode()
    def hidden_states(
        self, prompts: list[Prompt], hook: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]
    ) -> torch.Tensor:
        """Run a forward pass with hidden states and reduce them with ``hook`` (e.g. last-token pooling)."""
        enc = self.encode(prompts)
        out = self.model(**enc, output_hidden_states=True)
        return hook(out.hidden_states)
