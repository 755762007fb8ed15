"""The per-task gradient sketch cache: `cache_key` (a digest of everything a task's sketch
depends on) and `GradientCache` (one safetensors file per task, written atomically)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from slice_trl.mining.pool import Pool, make_spec, spec_dict

logger = logging.getLogger(__name__)

# Bumped when the cached content or its meaning changes, so old caches are not reused.
CACHE_VERSION = 2


def _file_fingerprint(path: Path) -> list:
    st = path.stat()
    return [path.name, st.st_size, st.st_mtime_ns]


def model_fingerprint(model: str) -> list:
    """Model identity for the cache key: the name, plus size and mtime of a local checkpoint's
    config and weight files (so a re-saved model at the same path is not mistaken for the old)."""
    p = Path(model)
    if not p.is_dir():
        return [model]
    files = sorted(f for f in p.iterdir() if f.is_file() and (f.name == "config.json"
                   or f.suffix in (".safetensors", ".bin", ".gguf", ".pt")))
    return [str(p.resolve())] + [_file_fingerprint(f) for f in files]


def _data_fingerprint(spec: Mapping) -> list:
    """Size and mtime of the task's local data (a file, or the files of a directory)."""
    if not spec.get("path"):
        return []
    p = Path(spec["path"])
    if p.is_file():
        return [_file_fingerprint(p)]
    if p.is_dir():
        if spec.get("source") == "superni" and spec.get("task"):
            from slice_trl.tasks import resolve_task_file

            return [_file_fingerprint(Path(resolve_task_file(p, spec["task"])))]
        return [_file_fingerprint(f) for f in sorted(p.rglob("*")) if f.is_file()]
    return []


def cache_key(pool: Pool, spec: Mapping) -> str:
    """Hex digest of everything the task's sketch depends on."""
    payload = {
        "version": CACHE_VERSION,
        "model": model_fingerprint(pool.model),
        "dtype": pool.dtype,
        "target_modules": pool.target_modules,
        "task": spec_dict(make_spec(spec)),  # every TaskSpec field, defaults included
        "data": _data_fingerprint(spec),
        "calibration": dataclasses.asdict(pool.calibration),
        "sketch_size": pool.sketch_size,
        "seed": pool.seed,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


class GradientCache:
    """One safetensors file per task: ``sketch`` (k,) float64 and ``sq_norm`` (1,) float64, with
    the cache key and the calibration record in the file's metadata. Written atomically (temp
    file + rename), so an interrupted run leaves either a complete entry or none."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path(self, name: str, key: str) -> Path:
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
        return self.directory / f"{safe}.{key[:16]}.safetensors"

    def load(self, name: str, key: str) -> tuple[torch.Tensor, float, dict] | None:
        from safetensors import safe_open

        file = self.path(name, key)
        if not file.exists():
            return None
        try:
            with safe_open(str(file), framework="pt") as fh:
                meta = fh.metadata() or {}
                if meta.get("key") != key:
                    return None
                sketch = fh.get_tensor("sketch")
                sq_norm = float(fh.get_tensor("sq_norm")[0])
        except Exception as exc:  # noqa: BLE001 - a corrupt entry is recomputed, not fatal
            logger.warning("Ignoring unreadable cache entry %s (%s); recomputing.", file, exc)
            return None
        return sketch, sq_norm, json.loads(meta.get("record", "{}"))

    def save(self, name: str, key: str, sketch: torch.Tensor, sq_norm: float, record: dict) -> Path:
        from safetensors.torch import save_file

        self.directory.mkdir(parents=True, exist_ok=True)
        file = self.path(name, key)
        tmp = file.with_name(file.name + f".tmp{os.getpid()}")
        save_file({"sketch": sketch.contiguous(), "sq_norm": torch.tensor([sq_norm], dtype=torch.float64)}, str(tmp),
                  metadata={"key": key, "record": json.dumps(record, default=str)})
        tmp.replace(file)
        return file
