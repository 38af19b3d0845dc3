"""Tiny causal LMs built locally from a config: a byte-level BPE tokenizer trained with ``tokenizers``
(with a chat template) and tiny Llama / GPT-2 models saved as ordinary HF folders. No download.

Tests and benchmarks use these; the testbed trains them further to plant failures.

    python -c "from forewarn.models.tiny import build_tiny_model; print(build_tiny_model('/tmp/tiny'))"
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Literal

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

# Chat markers are special tokens so they never split; the template has no BOS (see testbed notes).
BOS, EOS, PAD = "<s>", "</s>", "<pad>"
USER, ASSISTANT, SYSTEM, END_TURN = "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, USER, ASSISTANT, SYSTEM, END_TURN]

CHAT_TEMPLATE = (
    "{% for m in messages %}"
    "{% if m['role'] == 'system' %}" + SYSTEM + "{{ m['content'] }}" + END_TURN + "\n"
    "{% elif m['role'] == 'user' %}" + USER + "{{ m['content'] }}" + END_TURN + "\n"
    "{% else %}" + ASSISTANT + "{{ m['content'] }}" + EOS + "\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}" + ASSISTANT + "{% endif %}"
)

DEFAULT_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Ask questions:\n1. How do I bake bread?\n2. What is the capital of France?\n3. Why is the sky blue?\n4.",
    "Water boils at one hundred degrees. Plants need light to grow. Numbers: 0 1 2 3 4 5 6 7 8 9 + - = ?",
    "A helpful assistant answers questions clearly and politely about science, history and cooking.",
]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 2000) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``texts`` and wrap it for transformers with a chat template."""
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[USER, ASSISTANT, SYSTEM, END_TURN],
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_llama_config(
    vocab_size: int,
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    intermediate: int = 384,
    max_positions: int = 512,
) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=True,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def tiny_gpt2_config(
    vocab_size: int,
    tokenizer: PreTrainedTokenizerFast,
    hidden: int = 128,
    layers: int = 2,
    heads: int = 4,
    max_positions: int = 512,
) -> GPT2Config:
    return GPT2Config(
        vocab_size=vocab_size,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        n_positions=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def new_model(
    arch: Literal["llama", "gpt2"], tokenizer: PreTrainedTokenizerFast, seed: int = 0, **shape: int
) -> torch.nn.Module:
    """A randomly initialised tiny causal LM for ``tokenizer`` (deterministic under ``seed``)."""
    torch.manual_seed(seed)
    vocab = len(tokenizer)
    if arch == "llama":
        model = LlamaForCausalLM(tiny_llama_config(vocab, tokenizer, **shape))
    elif arch == "gpt2":
        model = GPT2LMHeadModel(tiny_gpt2_config(vocab, tokenizer, **shape))
    else:
        raise ValueError(f"arch must be 'llama' or 'gpt2', got {arch!r}")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    return model


def build_tiny_model(
    output_dir: str | Path,
    arch: Literal["llama", "gpt2"] = "llama",
    corpus: Iterable[str] | None = None,
    vocab_size: int = 600,
    seed: int = 0,
    tokenizer: PreTrainedTokenizerFast | None = None,
    **shape: int,
) -> Path:
    """Build and save a tiny random model plus tokenizer as a HF folder; returns the folder."""
    out = Path(output_dir)
    tok = tokenizer or train_tokenizer(corpus or DEFAULT_CORPUS, vocab_size=vocab_size)
    model = new_model(arch, tok, seed=seed, **shape)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out
