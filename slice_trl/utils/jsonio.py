"""The package's one JSON reader and writer: `read_json`, `write_json_atomic` (a reader sees either
the old file or the whole new one), `json_bytes` (the same text as bytes, for uploads); run
summaries with their predictions in a compressed sidecar (leaf module)."""

from __future__ import annotations

import gzip
import json
import os
import tempfile
from pathlib import Path

__all__ = ["json_bytes", "predictions_path", "read_json", "read_summary", "write_json_atomic", "write_summary"]


def read_json(path: str | os.PathLike):
    """The JSON value in the UTF-8 file ``path``."""
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def json_bytes(obj) -> bytes:
    """``obj`` as the bytes `write_json_atomic` writes (indent 2, UTF-8, trailing newline)."""
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=True) + "\n").encode("utf-8")


def write_json_atomic(path: str | os.PathLike, obj, indent: int = 2) -> None:
    """Write ``obj`` as JSON to ``path`` so that a reader sees either the old file or the whole
    new one: write a temporary file in the same directory, fsync it, then ``os.replace`` it onto
    ``path`` (atomic on POSIX and Windows within one file system). The directory is fsynced too
    where the platform allows, so the rename itself survives a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(obj, fh, indent=indent, ensure_ascii=False, allow_nan=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename durable; not possible on every OS (e.g. Windows)
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


PREDICTIONS = ("predictions", "base_predictions")  # the summary keys kept in the compressed sidecar


def predictions_path(summary_path: str | Path) -> Path:
    """``<name>.json`` -> ``<name>.predictions.json.gz``: the sidecar holding a summary's predictions."""
    path = Path(summary_path)
    return path.with_name(f"{path.stem}.predictions.json.gz")


def write_summary(path: str | Path, summary: dict) -> None:
    """Write a run summary as ``path`` (JSON, without the predictions) and, when the run kept
    predictions, its sidecar `predictions_path` (gzipped JSON, no timestamp in the header so the
    bytes depend only on the content; written atomically). Predictions repeat every held-out
    reference at every stage, so they compress ~10x and stay out of the readable summary."""
    path = Path(path)
    preds = {k: summary.get(k) for k in PREDICTIONS}
    write_json_atomic(path, {k: v for k, v in summary.items() if k not in PREDICTIONS})
    side = predictions_path(path)
    if not (preds["base_predictions"] or any(preds["predictions"] or [])):
        side.unlink(missing_ok=True)  # no stale predictions beside a summary that has none
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0, filename="") as gz:
        gz.write(json.dumps(preds, ensure_ascii=False).encode())
    os.replace(tmp, side)


def read_summary(path: str | Path) -> dict:
    """A summary JSON written by `write_summary`, with its predictions sidecar merged in when present."""
    path = Path(path)
    run = json.loads(path.read_text())
    if predictions_path(path).is_file():
        run.update(json.loads(gzip.decompress(predictions_path(path).read_bytes())))
    return run
