"""The ``hf`` backend: any transformers causal LM, batched with left padding.

Supports chat templates, dtype, seeds, ``device_map`` sharding over GPUs, n samples per prompt, stop
strings, per-token log-probs, and hooks for logits processors (kNN-LM, DExperts, stopping criteria)
that capabilities pass per call.
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
from forewarn.models.base import Completion, Prompt, apply_stop, as_chat

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
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=spec.trust_remote_code,
                                            local_files_only=local_only)
        kwargs = dict(dtype=DTYPES[spec.dtype], trust_remote_code=spec.trust_remote_code,
                      local_files_only=local_only)
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
        gen = input_ids[:, self.prompt_len:]
        texts = self.tok.batch_decode(gen[:, -32:], skip_special_tokens=True)
        return torch.tensor([any(s in t for s in self.stop) for t in texts], device=input_ids.device)


class HFGenerator:
    """Batched generation with a transformers causal LM, loaded once."""

    def __init__(self, spec: ModelSpec, model: PreTrainedModel | None = None,
                 tokenizer: PreTrainedTokenizerBase | None = None):
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
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.spec.max_input_tokens, add_special_tokens=False)
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.inference_mode()
    def generate(
        self,
        prompts: list[Prompt],
        params: GenerationParams,
        logits_processors: Sequence[LogitsProcessor] = (),
        stopping_criteria: Sequence[StoppingCriteria] = (),
    ) -> list[list[Completion]]:
        """Generate ``params.n`` completions per prompt; the result keeps the order of ``prompts``."""
        if not prompts:
            return []
        if params.seed is not None:
            torch.manual_seed(params.seed)
        enc = self.encode(prompts)
        prompt_len = enc["input_ids"].shape[1]
        stops = list(stopping_criteria)
        if params.stop:
            stops.append(_StopOnStrings(self.tokenizer, params.stop, prompt_len))
        sample = not params.greedy
        gen_kwargs = dict(
            max_new_tokens=params.max_new_tokens,
            do_sample=sample,
            num_return_sequences=params.n,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            logits_processor=LogitsProcessorList(logits_processors),
            stopping_criteria=StoppingCriteriaList(stops),
            return_dict_in_generate=True,
            output_scores=params.logprobs,
            repetition_penalty=params.repetition_penalty,
        )
        if sample:
            gen_kwargs.update(temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None)
        else:
            gen_kwargs.update(temperature=None, top_p=None, top_k=None)
        if params.n > 1 and not sample:
            # greedy decoding gives n identical samples; generate once and copy.
            gen_kwargs["num_return_sequences"] = 1
        out = self.model.generate(**enc, **gen_kwargs)
        seqs = out.sequences[:, prompt_len:]
        logps = None
        if params.logprobs:
            # scores are the processed logits; log-softmax gives the sampling distribution's log-probs.
            step_logps = torch.stack([torch.log_softmax(s.float(), dim=-1) for s in out.scores], dim=1)
            logps = step_logps.gather(-1, seqs[:, : step_logps.shape[1], None]).squeeze(-1)
        per_prompt = gen_kwargs["num_return_sequences"]
        results: list[list[Completion]] = []
        for i in range(len(prompts)):
            row = [self._completion(seqs[i * per_prompt + j], params,
                                    None if logps is None else logps[i * per_prompt + j])
                   for j in range(per_prompt)]
            if per_prompt < params.n:
                row = [row[0]] + [Completion(c.text, list(c.token_ids), c.finish_reason,
                                             None if c.logprobs is None else list(c.logprobs))
                                  for c in row * (params.n - 1)]
            results.append(row)
        return results

    def _completion(self, ids: torch.Tensor, params: GenerationParams, logps: torch.Tensor | None) -> Completion:
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
    def hidden_states(self, prompts: list[Prompt], hook: Callable[[tuple[torch.Tensor, ...]], torch.Tensor]
                      ) -> torch.Tensor:
        """Run a forward pass with hidden states and reduce them with ``hook`` (e.g. last-token pooling)."""
        enc = self.encode(prompts)
        out = self.model(**enc, output_hidden_states=True)
        return hook(out.hidden_states)
