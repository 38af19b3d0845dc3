"""What the guards judge: normalised text, and exactly the part of a prompt the model reads.

Two evasions this module closes:

- **Obfuscation.** Judges are trained on plain text; zero-width characters, control characters,
  full-width or styled letters (𝐢𝐝𝐢𝐨𝐭) and Cyrillic / Greek look-alikes (іdіоt) hide a word from them
  while a model still reads it. :func:`normalize_text` applies NFKC, drops format (Cf) and control
  characters, and maps the common look-alike letters to Latin before any judge sees the text.
- **Dilution.** A prompt longer than the model's input window is left-truncated before generation;
  judging the whole prompt lets benign padding dilute the score of the tail the model actually reads.
  :class:`PromptViewer` renders the prompt exactly as the generator does (chat template, left
  truncation to ``max_input_tokens``) and returns the visible text, every turn included (system,
  user and assistant: the model reads them all).
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Any

from forewarn.models.base import Prompt
from forewarn.models.hf import render_prompt

# Cyrillic and Greek letters that render like Latin ones (Unicode confusables, the common subset).
_CONFUSABLES = {
    "а": "a", "в": "b", "с": "c", "е": "e", "һ": "h", "і": "i", "ј": "j", "к": "k", "м": "m", "н": "h",
    "о": "o", "р": "p", "ѕ": "s", "т": "t", "у": "y", "х": "x", "ԁ": "d", "ɡ": "g", "ӏ": "l", "ԛ": "q",
    "ԝ": "w", "А": "A", "В": "B", "С": "C", "Е": "E", "Н": "H", "І": "I", "Ј": "J", "К": "K", "М": "M",
    "О": "O", "Р": "P", "Ѕ": "S", "Т": "T", "Х": "X", "У": "Y", "α": "a", "ο": "o", "ρ": "p", "ν": "v",
    "κ": "k", "ι": "i", "τ": "t", "υ": "u", "χ": "x", "Α": "A", "Β": "B", "Ε": "E", "Η": "H", "Ι": "I",
    "Κ": "K", "Μ": "M", "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Χ": "X", "Υ": "Y", "Ζ": "Z",
}  # fmt: skip
_TABLE = str.maketrans(_CONFUSABLES)
_KEEP_CONTROLS = {"\n", "\t", "\r"}


def normalize_text(text: str) -> str:
    """NFKC, then drop zero-width / format and control characters, then map look-alike letters to Latin.

    Whitespace controls (newline, tab) survive so sentence splitting still works."""
    text = unicodedata.normalize("NFKC", text)
    out = []
    for ch in text:
        cat = unicodedata.category(ch)
        if cat == "Cf" or (cat == "Cc" and ch not in _KEEP_CONTROLS):
            continue
        out.append(ch)
    return "".join(out).translate(_TABLE)


def turns_text(prompt: Prompt) -> str:
    """Every turn the model reads (system, user and assistant), one per line; a string prompt as is."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m["content"] for m in prompt if m.get("content"))


@dataclass
class PromptView:
    """The prompt as the model reads it: ``text`` (normalised, what the input guard judges), its length in
    tokens after truncation, and whether the window cut it."""

    text: str
    prompt_tokens: int
    truncated: bool


class PromptViewer:
    """Renders a prompt as the generator does and returns the part inside its input window.

    ``tokenizer`` is the generator model's own (loaded once per ingress replica); ``max_input_tokens`` and
    ``use_chat_template`` are the generator's ``ModelSpec`` fields, so the guard and the model agree."""

    def __init__(self, tokenizer: Any, max_input_tokens: int, use_chat_template: bool):
        self.tokenizer, self.max_input_tokens = tokenizer, max_input_tokens
        self.use_chat_template = use_chat_template

    def view(self, prompt: Prompt) -> PromptView:
        rendered = render_prompt(self.tokenizer, prompt, self.use_chat_template)
        ids = self.tokenizer(rendered, add_special_tokens=False)["input_ids"]
        if len(ids) <= self.max_input_tokens:
            return PromptView(normalize_text(turns_text(prompt)), len(ids), False)
        visible = self.tokenizer.decode(ids[-self.max_input_tokens :], skip_special_tokens=True)
        return PromptView(normalize_text(visible), self.max_input_tokens, True)
