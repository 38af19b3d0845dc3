"""Where a datastore key comes from, and a forward hook that captures it.

Goodtriever's key is the hidden state at the *input of the last transformer block's MLP* (for GPT-2 the
post-``ln_2`` residual of the final layer); the alternative is the output of the last block. The same hook
produces the keys when a datastore is built (every position) and the query when decoding (last position
only), so keys and queries always come from the same place.

The captured tensor lives in thread-local storage: two threads generating with the same model object (a
Serve replica handling concurrent requests) each see their own forward pass.
"""

from __future__ import annotations

import threading
from typing import Any, Literal

import torch

KeyType = Literal["mlp_input", "block_output"]


def last_block(model: torch.nn.Module) -> torch.nn.Module:
    """The last decoder block of a HF causal LM (GPT-2 ``h``, Llama/Mistral/Qwen/NeoX ``layers``)."""
    base = getattr(model, "base_model", model)
    for name in ("layers", "h", "blocks"):
        blocks = getattr(base, name, None)
        if isinstance(blocks, torch.nn.ModuleList) and len(blocks) > 0:
            return blocks[-1]
    decoder = getattr(base, "decoder", None)
    if decoder is not None and isinstance(getattr(decoder, "layers", None), torch.nn.ModuleList):
        return decoder.layers[-1]
    raise ValueError(
        f"cannot find the decoder blocks of {type(model).__name__} (looked for base_model.layers, "
        ".h, .blocks, .decoder.layers); this architecture is not supported for kNN-LM keys"
    )


def key_module(model: torch.nn.Module, key_type: KeyType) -> tuple[torch.nn.Module, bool]:
    """The module whose input (True) or output (False) is the key for ``key_type``."""
    block = last_block(model)
    if key_type == "block_output":
        return block, False
    if key_type != "mlp_input":
        raise ValueError(f"key_type must be 'mlp_input' or 'block_output', got {key_type!r}")
    for name in ("mlp", "feed_forward", "ffn", "fc1"):
        mod = getattr(block, name, None)
        if isinstance(mod, torch.nn.Module):
            return mod, True
    raise ValueError(
        f"the last block of {type(model).__name__} ({type(block).__name__}) has no mlp / "
        "feed_forward / ffn module; use key_type='block_output'"
    )


class HiddenCapture:
    """Forward hook that keeps the key tensor of the latest forward pass of this thread.

    ``last_only=True`` keeps only the last position (B, dim) as a copy, which is all decoding needs and
    frees the prompt's activations; otherwise the full (B, T, dim) tensor is kept (datastore building).
    """

    def __init__(self, model: torch.nn.Module, key_type: KeyType = "mlp_input", last_only: bool = False):
        self.module, self.capture_input = key_module(model, key_type)
        self.key_type, self.last_only = key_type, last_only
        self._local = threading.local()
        if self.capture_input:
            self._handle = self.module.register_forward_pre_hook(self._pre_hook)
        else:
            self._handle = self.module.register_forward_hook(self._post_hook)

    def _store(self, x: torch.Tensor) -> None:
        x = x.detach()
        self._local.value = x[:, -1, :].clone() if self.last_only else x

    def _pre_hook(self, module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        self._store(args[0])

    def _post_hook(self, module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        self._store(output[0] if isinstance(output, tuple) else output)

    @property
    def value(self) -> torch.Tensor:
        """The captured tensor; raises if no forward pass of the hooked model ran in this thread."""
        v = getattr(self._local, "value", None)
        if v is None:
            raise RuntimeError(
                "no hidden state was captured: the processor is attached to a different model "
                "object than the one generating, or it was closed"
            )
        return v

    def clear(self) -> None:
        self._local.value = None

    def close(self) -> None:
        """Remove the hook (idempotent)."""
        if self._handle is not None:
            self._handle.remove()
            self._handle = None

    def __enter__(self) -> "HiddenCapture":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
