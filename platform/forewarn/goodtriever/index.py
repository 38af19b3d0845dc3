"""faiss indexes for datastores: build (train + add in shards), save, load for search (CPU or GPU).

``build_index`` never holds more than ``train_size`` + ``add_chunk`` keys in fp32 at once: keys stay in the
fp16 memmap and are cast shard by shard. Every size parameter (nlist, m, nbits, nprobe) comes from the
config and is recorded in the datastore's metadata (the original silently ignored its size flags).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from forewarn.errors import ConfigError
from forewarn.goodtriever.config import IndexSpec


def _faiss() -> Any:
    import faiss

    return faiss


_GPU_RES: list[Any] = []


def gpu_resources() -> Any:
    """One ``StandardGpuResources`` per process, kept alive as long as any GPU index may use it."""
    if not _GPU_RES:
        _GPU_RES.append(_faiss().StandardGpuResources())
    return _GPU_RES[0]


def use_gpu(requested: bool | None, field: str = "index.gpu") -> bool:
    """Whether to run faiss on GPU: ``None`` means when faiss sees one; ``True`` requires one."""
    faiss = _faiss()
    n = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if requested is True and n == 0:
        raise ConfigError(
            f"{field} = true but faiss sees no GPU (faiss {faiss.__version__}); install "
            f"faiss-gpu-cu12 on a GPU machine or set {field} to null/false"
        )
    return bool(n) if requested is None else requested


def check_index_spec(spec: IndexSpec, n: int, dim: int) -> None:
    """Fail early, naming the field, when the index cannot be built for n keys of size dim."""
    if spec.kind != "ivfpq":
        return
    if dim % spec.m:
        raise ConfigError(
            f"index.m = {spec.m}: must divide the key dimension {dim} "
            f"(e.g. {', '.join(str(d) for d in range(1, dim + 1) if dim % d == 0 and d <= 128)})"
        )
    need = max(spec.nlist, 2**spec.nbits)
    if min(n, spec.train_size) < need:
        raise ConfigError(
            f"index: ivfpq with nlist={spec.nlist}, nbits={spec.nbits} needs at least {need} "
            f"training keys, the datastore has {n} (train_size={spec.train_size}); use "
            "index.kind=flat for small datastores or lower nlist / nbits"
        )


def new_index(spec: IndexSpec, dim: int) -> Any:
    faiss = _faiss()
    if spec.kind == "flat":
        return faiss.IndexFlatL2(dim)
    quantizer = faiss.IndexFlatL2(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, spec.nlist, spec.m, spec.nbits)
    index.nprobe = spec.nprobe
    return index


def build_index(keys: np.ndarray, spec: IndexSpec, path: str | Path, progress: Any = None) -> dict[str, Any]:
    """Train (on a seeded sample) and fill an index from an (N, dim) fp16 memmap; write it to ``path``.

    Returns build facts for the metadata (kind, sizes, seconds, whether the GPU was used).
    """
    faiss = _faiss()
    n, dim = keys.shape
    check_index_spec(spec, n, dim)
    gpu = use_gpu(spec.gpu)
    t0 = time.perf_counter()
    index = new_index(spec, dim)
    if gpu:
        index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index)
    trained_on = 0
    if not index.is_trained:
        rng = np.random.default_rng(spec.seed)
        take = min(spec.train_size, n)
        sample = np.sort(rng.choice(n, size=take, replace=False))
        index.train(np.ascontiguousarray(keys[sample], dtype=np.float32))
        trained_on = take
    t_train = time.perf_counter() - t0
    for start in range(0, n, spec.add_chunk):
        stop = min(n, start + spec.add_chunk)
        chunk = np.ascontiguousarray(keys[start:stop], dtype=np.float32)
        if spec.kind == "flat":
            index.add(chunk)  # sequential ids == row numbers
        else:
            index.add_with_ids(chunk, np.arange(start, stop, dtype=np.int64))
        if progress is not None:
            progress(stop - start)
    if gpu:
        index = faiss.index_gpu_to_cpu(index)
    if index.ntotal != n:
        raise RuntimeError(f"faiss index holds {index.ntotal} vectors, expected {n}")
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    faiss.write_index(index, str(tmp))
    tmp.replace(path)
    return {
        "kind": spec.kind,
        "nlist": spec.nlist,
        "m": spec.m,
        "nbits": spec.nbits,
        "nprobe": spec.nprobe,
        "trained_on": trained_on,
        "ntotal": int(index.ntotal),
        "gpu": gpu,
        "faiss": faiss.__version__,
        "train_seconds": round(t_train, 3),
        "total_seconds": round(time.perf_counter() - t0, 3),
    }


def load_index(path: str | Path, nprobe: int | None, gpu: bool | None, fp16_lookup: bool = True) -> Any:
    """Read an index for search; ``nprobe`` applies to IVF indexes; moved to GPU when asked/available."""
    faiss = _faiss()
    path = Path(path)
    if not path.is_file():
        raise ConfigError(
            f"faiss index {str(path)!r} does not exist; build the datastore first "
            "(forewarn goodtriever build)"
        )
    index = faiss.read_index(str(path))
    if nprobe is not None and hasattr(index, "nprobe"):
        faiss.extract_index_ivf(index).nprobe = nprobe
    if use_gpu(gpu, "gpu"):
        co = faiss.GpuClonerOptions()
        co.useFloat16LookupTables = fp16_lookup
        index = faiss.index_cpu_to_gpu(gpu_resources(), 0, index, co)
        if nprobe is not None and hasattr(index, "nprobe"):
            index.nprobe = nprobe
    return index
