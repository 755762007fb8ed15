"""Publishing a continual run to the Hugging Face Hub, and loading its stages back.

The trainer writes, per finished stage ``output_dir/stages/NN-<task>/``: ``record.json`` (written
last: a stage is finished iff it exists), ``adapter/`` (the trained adapter, RAW: it applies to the
base AFTER the non-zero initialisation was absorbed into it), ``init_adapter/`` (A0, B0 right after
initialisation) and ``adapter_original_base/`` (the converted adapter that applies to the base as it
was before the stage: ``A' = [A; A0]``, ``B' = [B | -B0]``, rank and alpha doubled). Only the
converted adapter is published.

Hub layout of a model repo (one commit per stage)::

    README.md                   model card (model_cards/continual_run.md)
    run.json                    base model, task order, seed, LoRA config (secrets redacted)
    recipe.yaml                 the recipe, when the run had one (secrets redacted)
    results.json, results_heatmap.png
    stage-NN-<task>/            adapter_config.json, adapter_model.safetensors, record.json

Stage k's adapter applies to the base model with stages 1..k-1 merged in: `load_stage` does that.

Public API:

- `convert_stage_adapter` (PEFT's own conversion on the live PeftModel) and
  `convert_adapter_files` (the same maths on saved files) produce ``adapter_original_base``.
- `push_stage` publishes one stage; `push_pending` publishes every finished stage that is not on
  the Hub yet and never raises (it returns a `PushReport`); `push_pending_in_background` runs it
  on a worker thread so training never waits for the network.
- `push_task_splits` publishes the prepared task splits to a dataset repo.
- `load_stage` rebuilds the model at the end of any stage from the Hub.

Tokens: every function takes ``token=None``, which lets huggingface_hub resolve it (``HF_TOKEN``,
then the login cache). The token is only ever passed to huggingface_hub; it is never written to
a file, a card or a log message (known secrets and ``hf_...`` strings are redacted from run.json,
recipe.yaml, record.json and from warning messages).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import math
import os
import re
import shutil
import tempfile
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

logger = logging.getLogger(__name__)

PUBLISHED_SUBDIR = "adapter_original_base"
RAW_SUBDIR = "adapter"
INIT_SUBDIR = "init_adapter"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PUSHED_MARKER = "pushed.json"
MODEL_CARD_TEMPLATE = "continual_run.md"
DATASET_CARD_TEMPLATE = "task_splits.md"
MODEL_TAGS = ["continual-learning", "lora", "slice", "peft", "slice-trl"]
DATASET_TAGS = ["continual-learning", "slice-trl"]
# Local aliases that stand for a Hub model (models.py's embedded GGUF is SmolLM2-135M-Instruct).
KNOWN_BASE_IDS = {"smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct"}
INIT_DISPLAY = {"slice": "SLICE", "lora_ga": "LoRA-GA", "loram": "LoRAM", "vanilla": "vanilla LoRA"}

_LOCAL_STAGE_RE = re.compile(r"^(\d+)-(.+)$")
_REMOTE_STAGE_RE = re.compile(r"^stage-(\d+)-([^/]+)$")
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9_]{16,}")
_SECRET_KEYS = {
    "token", "hub_token", "hf_token", "huggingface_token", "hugging_face_hub_token", "huggingface_hub_token",
    "use_auth_token", "auth_token", "access_token", "api_key", "apikey", "password", "secret", "wandb_api_key",
}
_REDACTED = "<redacted>"


# ----------------------------------------------------------------------------- run layout
@dataclass(frozen=True)
class StageDir:
    """A finished stage folder ``stages/NN-<task>/`` (it has ``record.json``)."""

    number: int
    task: str
    path: Path

    @property
    def folder(self) -> str:
        """The stage's folder in the Hub repo: ``stage-NN-<task>``."""
        return f"stage-{self.number:02d}-{_safe_name(self.task)}"


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "task"


def finished_stages(output_dir: str | os.PathLike) -> list[StageDir]:
    """Finished stages of a run directory, in stage order (a stage is finished iff its
    ``record.json`` exists: the trainer writes it last)."""
    root = Path(output_dir) / "stages"
    if not root.is_dir():
        return []
    stages = []
    for child in root.iterdir():
        match = _LOCAL_STAGE_RE.match(child.name)
        if child.is_dir() and match and (child / "record.json").is_file():
            stages.append(StageDir(int(match.group(1)), match.group(2), child))
    stages.sort(key=lambda s: s.number)
    numbers = [s.number for s in stages]
    if len(set(numbers)) != len(numbers):
        raise ValueError(f"{root} has two finished folders for the same stage number: {[s.path.name for s in stages]}")
    return stages


def _read_json(path: Path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=True) + "\n").encode("utf-8")


# ----------------------------------------------------------------------------- secrets
def _known_secrets(token: str | bool | None) -> list[str]:
    """The token(s) this call may use: the explicit one and whatever huggingface_hub resolves."""
    found = []
    if isinstance(token, str) and token:
        found.append(token)
    try:
        from huggingface_hub import get_token

        resolved = get_token()
        if resolved:
            found.append(resolved)
    except Exception:  # never let secret lookup break publishing
        pass
    return [s for s in dict.fromkeys(found) if len(s) >= 8]


def _redact(obj: Any, secrets: list[str]) -> Any:
    """A copy of ``obj`` with credential-looking values replaced (keys such as ``hub_token``,
    ``HF_TOKEN``, ``password``; any string containing a known token or an ``hf_...`` token)."""
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if isinstance(key, str) and key.lower() in _SECRET_KEYS and isinstance(value, str) and value:
                out[key] = _REDACTED
            else:
                out[key] = _redact(value, secrets)
        return out
    if isinstance(obj, (list, tuple)):
        return [_redact(v, secrets) for v in obj]
    if isinstance(obj, str) and (any(s in obj for s in secrets) or _TOKEN_RE.search(obj)):
        return _REDACTED
    return obj


def _scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return _TOKEN_RE.sub("hf_***", text)


def _describe(err: BaseException, secrets: list[str]) -> str:
    """A short, token-free description of ``err`` (the scrubbed traceback goes to DEBUG)."""
    import traceback

    logger.debug("%s", _scrub("".join(traceback.format_exception(err)), secrets))
    lines = [line for line in str(err).splitlines() if line.strip()][:4]
    return _scrub(f"{type(err).__name__}: {' | '.join(lines)}", secrets)


# ----------------------------------------------------------------------------- adapter conversion
def _adapter_files_dir(path: str | os.PathLike) -> Path:
    """The folder holding ``adapter_config.json``: ``path`` itself, or its only sub-folder that has
    one (PEFT saves a non-"default" adapter under ``path/<adapter_name>/``)."""
    path = Path(path)
    if (path / ADAPTER_CONFIG).is_file():
        return path
    candidates = [p for p in path.iterdir() if (p / ADAPTER_CONFIG).is_file()] if path.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise FileNotFoundError(f"No {ADAPTER_CONFIG} in {path} (nor in exactly one sub-folder of it).")
    raise ValueError(f"{path} holds several adapters ({[p.name for p in candidates]}); pass the one to use.")


def _check_convertible(cfg: dict) -> None:
    """Refuse adapters whose conversion would silently drop trained weights."""
    problems = []
    peft_type = cfg.get("peft_type", "LORA")
    if str(getattr(peft_type, "value", peft_type)).upper() != "LORA":
        problems.append(f"peft_type={cfg.get('peft_type')!r} (only LoRA)")
    if cfg.get("use_dora"):
        problems.append("use_dora=True")
    if cfg.get("bias", "none") != "none":
        problems.append(f"bias={cfg.get('bias')!r}")
    if cfg.get("lora_bias"):
        problems.append("lora_bias=True")
    if cfg.get("modules_to_save"):
        problems.append(f"modules_to_save={cfg.get('modules_to_save')!r}")
    if cfg.get("use_rslora") and (cfg.get("rank_pattern") or cfg.get("alpha_pattern")):
        problems.append("use_rslora together with rank_pattern/alpha_pattern")
    if problems:
        raise ValueError(
            "Cannot convert this adapter for the original base model: " + ", ".join(problems) + ". The "
            "conversion A'=[A;A0], B'=[B|-B0] covers plain LoRA A/B matrices only."
        )


def _doubled_config(cfg: dict) -> dict:
    """The adapter config of the converted adapter: rank doubled, scaling unchanged (what PEFT's
    ``save_pretrained(path_initial_model_for_weight_conversion=...)`` writes)."""
    cfg = dict(cfg)
    cfg["r"] = 2 * cfg["r"]
    cfg["lora_alpha"] = cfg["lora_alpha"] * (2**0.5 if cfg.get("use_rslora") else 2)
    if cfg.get("rank_pattern"):
        cfg["rank_pattern"] = {k: 2 * v for k, v in cfg["rank_pattern"].items()}
    if cfg.get("alpha_pattern"):
        cfg["alpha_pattern"] = {k: 2 * v for k, v in cfg["alpha_pattern"].items()}
    cfg["init_lora_weights"] = True
    cfg["inference_mode"] = True
    return cfg


def _install_adapter(files: dict[str, Path | bytes], out_dir: Path) -> Path:
    """Write ``files`` (name -> source path or bytes) as the folder ``out_dir``, replacing it."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        for name, src in files.items():
            if isinstance(src, bytes):
                (tmp / name).write_bytes(src)
            else:
                shutil.copyfile(src, tmp / name)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def convert_stage_adapter(peft_model, adapter_name: str, init_dir: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Convert the live adapter ``adapter_name`` of ``peft_model`` (trained on a base whose weights
    had ``scaling * B0 @ A0`` absorbed) into an adapter for the UNMODIFIED base, with PEFT's own
    ``save_pretrained(..., path_initial_model_for_weight_conversion=init_dir)``; writes
    ``adapter_config.json`` + ``adapter_model.safetensors`` into ``out_dir`` and returns it.

    ``init_dir`` is the PEFT save of the adapter right after initialisation (A0, B0). Call it right
    after training, before merging. What this wrapper adds to PEFT's conversion:

    - PEFT first OVERWRITES ``<init_dir>/adapter_config.json`` with the trained adapter's config,
      then loads the init adapter under the init folder's base name and deletes it afterwards. We
      stage a copy of the init adapter under a unique name: the trainer's ``init_adapter/`` is never
      rewritten, the name cannot collide with (and delete) a live adapter, and an init adapter saved
      by PEFT in a sub-folder (``init_adapter/<name>/``) works (PEFT expects the files directly).
    - the copy's ``init_lora_weights`` is set to True (PEFT refuses, or re-runs, PiSSA/LoRA-GA/...
      initialisations when it loads an init adapter that names them).
    - a non-"default" adapter is saved by PEFT under ``<dir>/<adapter_name>/``; ``out_dir`` gets the
      files directly, without PEFT's generated README.md.
    - the active adapter(s) and train/eval mode are restored afterwards.
    """
    if adapter_name not in peft_model.peft_config:
        raise ValueError(f"Adapter {adapter_name!r} is not in the model (it has {list(peft_model.peft_config)}).")
    _check_convertible(peft_model.peft_config[adapter_name].to_dict())
    init_src = _adapter_files_dir(init_dir)
    was_training = peft_model.training
    active = list(peft_model.active_adapters)
    with tempfile.TemporaryDirectory(prefix="slice_trl_convert_") as tmp:
        init_name = f"slice_trl_init_{uuid.uuid4().hex[:8]}"
        staged = Path(tmp) / init_name
        staged.mkdir()
        shutil.copyfile(init_src / ADAPTER_WEIGHTS, staged / ADAPTER_WEIGHTS)
        init_cfg = _read_json(init_src / ADAPTER_CONFIG)
        init_cfg["init_lora_weights"] = True
        (staged / ADAPTER_CONFIG).write_text(json.dumps(init_cfg, indent=2))
        save_dir = Path(tmp) / "converted"
        try:
            peft_model.save_pretrained(
                str(save_dir), selected_adapters=[adapter_name], path_initial_model_for_weight_conversion=str(staged)
            )
        finally:
            if init_name in peft_model.peft_config:
                peft_model.delete_adapter(init_name)
            if list(peft_model.active_adapters) != active:
                peft_model.base_model.set_adapter(active if len(active) > 1 else active[0])
            peft_model.train(was_training)
        produced = save_dir if adapter_name == "default" else save_dir / adapter_name
        return _install_adapter(
            {ADAPTER_CONFIG: produced / ADAPTER_CONFIG, ADAPTER_WEIGHTS: produced / ADAPTER_WEIGHTS}, Path(out_dir)
        )


def convert_adapter_files(
    adapter_dir: str | os.PathLike, init_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> Path:
    """The same conversion as `convert_stage_adapter`, from saved files only (no model needed):
    ``A' = [A; A0]``, ``B' = [B | -B0]``, ``r' = 2r``, ``alpha' = 2 alpha`` (``sqrt(2) alpha`` with
    rsLoRA), so ``scaling' B' A' = scaling (B A - B0 A0)``. Returns ``out_dir``."""
    import torch
    from safetensors.torch import load_file, save_file

    a_dir, i_dir = _adapter_files_dir(adapter_dir), _adapter_files_dir(init_dir)
    cfg = _read_json(a_dir / ADAPTER_CONFIG)
    _check_convertible(cfg)
    trained, init = load_file(str(a_dir / ADAPTER_WEIGHTS)), load_file(str(i_dir / ADAPTER_WEIGHTS))
    if set(trained) != set(init):
        diff = sorted(set(trained) ^ set(init))[:5]
        raise ValueError(f"{a_dir} and {i_dir} hold different tensors (e.g. {diff}): not the same adapter.")
    converted = {}
    for key, value in trained.items():
        if ".lora_A." in key:
            converted[key] = torch.cat([value, init[key]], dim=0).contiguous()
        elif ".lora_B." in key:
            converted[key] = torch.cat([value, -init[key]], dim=1).contiguous()
        else:
            raise ValueError(f"Cannot convert tensor {key!r}: only lora_A / lora_B weights are supported.")
    with tempfile.TemporaryDirectory(prefix="slice_trl_convert_") as tmp:
        weights = Path(tmp) / ADAPTER_WEIGHTS
        save_file(converted, str(weights), metadata={"format": "pt"})
        return _install_adapter(
            {ADAPTER_CONFIG: json.dumps(_doubled_config(cfg), indent=2).encode(), ADAPTER_WEIGHTS: weights},
            Path(out_dir),
        )


def published_adapter_dir(stage: StageDir) -> Path:
    """``adapter_original_base`` of a stage; made from ``adapter`` + ``init_adapter`` when missing."""
    published = stage.path / PUBLISHED_SUBDIR
    if (published / ADAPTER_CONFIG).is_file() and (published / ADAPTER_WEIGHTS).is_file():
        return published
    raw, init = stage.path / RAW_SUBDIR, stage.path / INIT_SUBDIR
    if raw.is_dir() and init.is_dir():
        logger.info("Stage %d has no %s/: converting %s/ with %s/.", stage.number, PUBLISHED_SUBDIR, RAW_SUBDIR,
                    INIT_SUBDIR)
        return convert_adapter_files(raw, init, published)
    raise FileNotFoundError(f"Stage {stage.number} ({stage.path}) has neither {PUBLISHED_SUBDIR}/ nor "
                            f"{RAW_SUBDIR}/ + {INIT_SUBDIR}/ to publish.")


# ----------------------------------------------------------------------------- uploads
def _git_blob_oid_file(path: Path) -> str:
    h = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class _Upload:
    """One file to publish: a local path or generated bytes."""

    path_in_repo: str
    source: Path | bytes
    _sha256: str | None = field(default=None, repr=False)

    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = (hashlib.sha256(self.source).hexdigest() if isinstance(self.source, bytes)
                            else _sha256_file(self.source))
        return self._sha256

    def git_oid(self) -> str:
        if isinstance(self.source, bytes):
            return hashlib.sha1(b"blob %d\0" % len(self.source) + self.source).hexdigest()
        return _git_blob_oid_file(self.source)

    def matches(self, remote) -> bool:
        """Same content as the remote file (``RepoSibling`` with blob metadata, or None)?"""
        if remote is None:
            return False
        if remote.lfs is not None:
            return remote.lfs.sha256 == self.sha256()
        return remote.blob_id == self.git_oid()

    def operation(self):
        from huggingface_hub import CommitOperationAdd

        src = self.source if isinstance(self.source, bytes) else str(self.source)
        return CommitOperationAdd(path_in_repo=self.path_in_repo, path_or_fileobj=src)


@dataclass
class _RemoteState:
    sha: str
    files: dict  # path -> RepoSibling (with blob_id / lfs)

    def stage_folders(self) -> dict[int, str]:
        return _stage_folders(self.files)


def _stage_folders(paths: Iterable[str]) -> dict[int, str]:
    """{stage number: folder} for the ``stage-NN-<task>/`` folders that hold an adapter."""
    out: dict[int, str] = {}
    for path in paths:
        folder, _, name = path.partition("/")
        match = _REMOTE_STAGE_RE.match(folder)
        if match and name == ADAPTER_CONFIG:
            out[int(match.group(1))] = folder
    return dict(sorted(out.items()))


def _remote_state(api, repo_id: str, revision: str) -> _RemoteState:
    info = api.model_info(repo_id, revision=revision, files_metadata=True)
    return _RemoteState(info.sha, {s.rfilename: s for s in info.siblings or []})


def _stage_uploads(stage: StageDir, secrets: list[str]) -> list[_Upload]:
    published = published_adapter_dir(stage)
    record = _redact(_read_json(stage.path / "record.json"), secrets)
    return [
        _Upload(f"{stage.folder}/{ADAPTER_CONFIG}", published / ADAPTER_CONFIG),
        _Upload(f"{stage.folder}/{ADAPTER_WEIGHTS}", published / ADAPTER_WEIGHTS),
        _Upload(f"{stage.folder}/record.json", _json_bytes(record)),
    ]


def _load_run(output_dir: Path, secrets: list[str]) -> dict:
    path = output_dir / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the trainer writes it when the run starts.")
    run = _read_json(path)
    if not isinstance(run, dict):
        raise ValueError(f"{path} must hold a JSON object.")
    return _redact(run, secrets)


def _shared_uploads(output_dir: Path, run: dict, card: bytes) -> list[_Upload]:
    import yaml

    uploads = [_Upload("run.json", _json_bytes(run))]
    for name in ("results.json", "results_heatmap.png"):
        if (output_dir / name).is_file():
            uploads.append(_Upload(name, output_dir / name))
    if run.get("recipe") is not None:
        recipe = yaml.safe_dump(run["recipe"], sort_keys=False, allow_unicode=True).encode("utf-8")
        uploads.append(_Upload("recipe.yaml", recipe))
    uploads.append(_Upload("README.md", card))
    return uploads


# ----------------------------------------------------------------------------- model card
def _template_path(name: str, template_path: str | os.PathLike | None) -> Path:
    if template_path is not None:
        return Path(template_path)
    env = os.environ.get("SLICE_TRL_MODEL_CARDS")
    for root in ([Path(env)] if env else []) + [Path(__file__).resolve().parent.parent / "model_cards"]:
        if (root / name).is_file():
            return root / name
    raise FileNotFoundError(
        f"Card template {name!r} not found: it lives in the repository's model_cards/ folder. Pass "
        "template_path=... or set SLICE_TRL_MODEL_CARDS to that folder."
    )


def _base_model_id(base: str | None) -> str | None:
    """The Hub id of the base model, or None for a local checkpoint."""
    if not base:
        return None
    if base in KNOWN_BASE_IDS:
        return KNOWN_BASE_IDS[base]
    if base.startswith((".", "/", "~")) or Path(base).exists():
        return None
    return base if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", base) else None


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(str(v) for v in value)
    return str(value)


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def render_model_card(
    output_dir: str | os.PathLike,
    repo_id: str,
    published: dict[int, str],
    *,
    dataset_repo_id: str | None = None,
    token: str | bool | None = None,
    template_path: str | os.PathLike | None = None,
):
    """The ``huggingface_hub.ModelCard`` of a run, listing the stages in ``published``
    ({stage number: repo folder}). Deterministic (no dates), so an unchanged run renders the same."""
    from huggingface_hub import ModelCard, ModelCardData, constants

    output_dir = Path(output_dir)
    secrets = _known_secrets(token)
    run = _load_run(output_dir, secrets)
    results = _read_json(output_dir / "results.json") if (output_dir / "results.json").is_file() else {}
    task_names = list(results.get("task_names") or run.get("task_names") or [])
    R = results.get("R") or []
    local = {s.number: s for s in finished_stages(output_dir)}

    stages = []
    for number, folder in sorted(published.items()):
        match = _REMOTE_STAGE_RE.match(folder)
        task = task_names[number - 1] if 0 < number <= len(task_names) else (match.group(2) if match else folder)
        rank = "–"
        if number in local and (local[number].path / PUBLISHED_SUBDIR / ADAPTER_CONFIG).is_file():
            cfg = _read_json(local[number].path / PUBLISHED_SUBDIR / ADAPTER_CONFIG)
            rank = str(cfg.get("r", "–"))
        own = R[number - 1][number - 1] if len(R) >= number and len(R[number - 1]) >= number else None
        stages.append({"number": number, "task": task, "folder": folder, "rank": rank, "own_score": _fmt(own)})
    missing = [str(n) for n in sorted(local) if n not in published]

    r_table = [
        {"label": f"{i + 1} ({task_names[i]})" if i < len(task_names) else str(i + 1),
         "cells": [_fmt(row[j]) if j < len(row) else "–" for j in range(len(task_names))]}
        for i, row in enumerate(R)
    ] if task_names else []
    summary = [{"name": name, "value": _fmt(results[key])}
               for key, name in (("AP", "AP"), ("FP", "FP"), ("forgetting", "Forgetting"), ("GP", "GP"), ("IP", "IP"))
               if results.get(key) is not None]

    base = run.get("base_model")
    base_id = _base_model_id(base)
    lora = run.get("lora") or {}
    recipe = run.get("recipe") or {}
    init_method = (_dig(run, "init", "method") or _dig(recipe, "init", "method") or _dig(recipe, "init_method")
                   or run.get("init_method"))
    lora_rows = [{"name": name, "value": _fmt(lora.get(key))}
                 for key, name in (("r", "rank r"), ("lora_alpha", "alpha"), ("use_rslora", "rsLoRA"),
                                   ("lora_dropout", "dropout"), ("target_modules", "target modules"))
                 if lora.get(key) is not None]
    if init_method:
        lora_rows.insert(0, {"name": "initialisation", "value": str(init_method)})

    card_data = ModelCardData(
        base_model=base_id,
        library_name="peft",
        tags=list(MODEL_TAGS),
        datasets=[dataset_repo_id] if dataset_repo_id else None,
        pipeline_tag="text-generation",
    )
    example = max(published) if published else 1
    card = ModelCard.from_template(
        card_data,
        template_path=str(_template_path(MODEL_CARD_TEMPLATE, template_path)),
        title=f"{repo_id.split('/')[-1]}: continual LoRA, {len(task_names)} tasks",
        repo_id=repo_id,
        base_model_display=base_id or base or "<base model>",
        base_model_link=f"{constants.ENDPOINT}/{base_id}" if base_id else None,
        task_names=task_names,
        init_method_display=INIT_DISPLAY.get(str(init_method), str(init_method or "LoRA")),
        seed=run.get("seed"),
        stages=stages,
        stages_missing=missing,
        r_table=r_table,
        summary=summary,
        has_heatmap=(output_dir / "results_heatmap.png").is_file(),
        has_recipe=run.get("recipe") is not None,
        lora_rows=lora_rows,
        example_stage=example,
        dataset_repo_id=dataset_repo_id,
        dataset_url=f"{constants.ENDPOINT}/datasets/{dataset_repo_id}" if dataset_repo_id else None,
    )
    text = _scrub(str(card), secrets)
    return ModelCard(text)


# ----------------------------------------------------------------------------- pushing
@dataclass
class PushReport:
    """What `push_pending` did. ``failed`` maps stage number -> reason (0 = run-level files)."""

    repo_id: str
    revision: str = "main"
    pushed: list[int] = field(default_factory=list)
    up_to_date: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    commits: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed

    def __str__(self) -> str:
        parts = [f"pushed {self.pushed}" if self.pushed else "", f"up to date {self.up_to_date}" if self.up_to_date else "",
                 f"FAILED {sorted(self.failed)}" if self.failed else ""]
        return f"{self.repo_id}@{self.revision}: " + ("; ".join(p for p in parts if p) or "nothing to push")


def _hf_api(token):
    from huggingface_hub import HfApi

    return HfApi(token=token, library_name="slice-trl")


def _ensure_repo(api, repo_id: str, private: bool, revision: str) -> str:
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    repo_id = getattr(url, "repo_id", None) or repo_id
    if revision not in (None, "main"):
        api.create_branch(repo_id, branch=revision, exist_ok=True)
    return repo_id


def _update_marker(output_dir: Path, repo_id: str, revision: str, head: str, stages: list[StageDir],
                   uploads: dict[int, list[_Upload]]) -> None:
    """Record in ``output_dir/pushed.json`` what is on the Hub (informative: the Hub listing decides)."""
    path = output_dir / PUSHED_MARKER
    try:
        data = _read_json(path) if path.is_file() else {}
        entry = data.setdefault(f"{repo_id}@{revision}", {"repo_id": repo_id, "revision": revision, "stages": {}})
        entry["head"] = head
        for stage in stages:
            entry["stages"][str(stage.number)] = {
                "task": stage.task,
                "folder": stage.folder,
                "commit": head,
                "files": {u.path_in_repo: u.sha256() for u in uploads.get(stage.number, [])},
            }
        tmp = path.with_name(f".{PUSHED_MARKER}.tmp-{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps(data, indent=2) + "\n")
        os.replace(tmp, path)
    except Exception as err:  # the marker is a convenience: never fail a push for it
        logger.warning("Could not update %s: %s", path, type(err).__name__)


def _commit(api, output_dir: Path, repo_id: str, revision: str, stages: list[StageDir], secrets: list[str], *,
            token, dataset_repo_id: str | None, commit_message: str | None, template_path, attempts: int = 3):
    """One commit with ``stages``' folders plus the run-level files, holding only what differs from
    the Hub; None if nothing differs. Retries when someone committed in between (412)."""
    from huggingface_hub.errors import HfHubHTTPError

    run = _load_run(output_dir, secrets)
    stage_uploads = {s.number: _stage_uploads(s, secrets) for s in stages}
    for attempt in range(attempts):
        state = _remote_state(api, repo_id, revision)
        published = {**state.stage_folders(), **{s.number: s.folder for s in stages}}
        card = render_model_card(output_dir, repo_id, published, dataset_repo_id=dataset_repo_id, token=token,
                                 template_path=template_path)
        uploads = [u for ups in stage_uploads.values() for u in ups] + _shared_uploads(output_dir, run, str(card).encode())
        changed = [u for u in uploads if not u.matches(state.files.get(u.path_in_repo))]
        if not changed:
            logger.info("%s@%s already has %s: nothing to commit.", repo_id, revision,
                        ", ".join(s.folder for s in stages) or "the run files")
            _update_marker(output_dir, repo_id, revision, state.sha, stages, stage_uploads)
            return None
        if commit_message:
            message = commit_message
        elif stages:
            total = len(run.get("task_names") or [])
            message = "; ".join(f"Stage {s.number}{f'/{total}' if total else ''}: {s.task}" for s in stages)
        else:
            message = "Update run results and model card"
        try:
            info = api.create_commit(
                repo_id,
                operations=[u.operation() for u in changed],
                commit_message=message,
                commit_description="Files: " + ", ".join(u.path_in_repo for u in changed),
                revision=revision,
                parent_commit=state.sha,
            )
        except HfHubHTTPError as err:
            status = getattr(getattr(err, "response", None), "status_code", None)
            if status == 412 and attempt + 1 < attempts:
                logger.info("%s@%s moved while publishing; retrying on the new head.", repo_id, revision)
                continue
            raise
        logger.info("Published %s to %s@%s (commit %s).", message, repo_id, revision, info.oid[:10])
        _update_marker(output_dir, repo_id, revision, info.oid, stages, stage_uploads)
        return info
    return None  # pragma: no cover  (the loop returns or raises)


def push_stage(
    output_dir: str | os.PathLike,
    stage: int,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str = "main",
    *,
    dataset_repo_id: str | None = None,
    commit_message: str | None = None,
    template_path: str | os.PathLike | None = None,
):
    """Publish finished stage ``stage`` (1-indexed) of the run in ``output_dir`` to the model repo
    ``repo_id`` in ONE commit: ``stage-NN-<task>/`` (the adapter for the original base + the stage's
    record.json), run.json, recipe.yaml, results.json, the heatmap and the README model card.

    Creates the repo (``exist_ok``) and, for ``revision != "main"``, the branch. Files whose content
    is already on the Hub are left out; when nothing differs no commit is made and None is returned,
    else the `huggingface_hub.CommitInfo`. Raises on errors (see `push_pending` for the safe variant).
    """
    output_dir = Path(output_dir)
    stages = {s.number: s for s in finished_stages(output_dir)}
    if int(stage) not in stages:
        raise ValueError(f"Stage {stage} of {output_dir} is not finished (no stages/{int(stage):02d}-*/record.json); "
                         f"finished: {sorted(stages)}.")
    secrets = _known_secrets(token)
    api = _hf_api(token)
    repo_id = _ensure_repo(api, repo_id, private, revision)
    return _commit(api, output_dir, repo_id, revision, [stages[int(stage)]], secrets, token=token,
                   dataset_repo_id=dataset_repo_id, commit_message=commit_message, template_path=template_path)


def push_pending(
    output_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str = "main",
    *,
    dataset_repo_id: str | None = None,
    stop_on_error: bool = True,
    template_path: str | os.PathLike | None = None,
) -> PushReport:
    """Publish every finished stage whose files are not (identically) on the Hub yet, one commit per
    stage, in order; then refresh the run-level files (results, card) if they changed.

    Safe to call after every stage and at any time: it compares local content with the Hub listing
    (so pushing twice makes no commit), NEVER raises (errors are logged as warnings, without the
    token, and returned in `PushReport.failed`), and never modifies or deletes the run's files
    (it only adds a missing ``adapter_original_base/`` and updates ``pushed.json``). With
    ``stop_on_error`` the stages after a failed one are not attempted (they stay pending).
    """
    output_dir = Path(output_dir)
    report = PushReport(repo_id=repo_id, revision=revision)
    secrets = _known_secrets(token)
    stages: list[StageDir] = []
    try:
        stages = finished_stages(output_dir)
        if not stages:
            return report
        api = _hf_api(token)
        report.repo_id = repo_id = _ensure_repo(api, repo_id, private, revision)
        state = _remote_state(api, repo_id, revision)
    except Exception as err:
        reason = _describe(err, secrets)
        logger.warning("Could not publish %s to %s: %s. Nothing is lost: the stages stay on disk and the next "
                       "push_pending() retries.", output_dir, repo_id, reason)
        report.failed.update({s.number: reason for s in stages} or {0: reason})
        return report

    kwargs = dict(token=token, dataset_repo_id=dataset_repo_id, commit_message=None, template_path=template_path)
    for index, stage in enumerate(stages):
        try:
            if state is not None and all(u.matches(state.files.get(u.path_in_repo)) for u in _stage_uploads(stage, secrets)):
                report.up_to_date.append(stage.number)
                continue
            info = _commit(api, output_dir, repo_id, revision, [stage], secrets, **kwargs)
            if info is None:
                report.up_to_date.append(stage.number)
            else:
                report.pushed.append(stage.number)
                report.commits.append(info.oid)
                state = None  # the head moved: list again only if needed
        except Exception as err:
            reason = _describe(err, secrets)
            report.failed[stage.number] = reason
            logger.warning("Publishing stage %d (%s) to %s failed: %s. It stays pending; the next push_pending() "
                           "retries it.", stage.number, stage.task, repo_id, reason)
            if stop_on_error:
                for later in stages[index + 1:]:
                    report.failed[later.number] = f"not attempted: stage {stage.number} failed"
                return report
            state = None
        if state is None and index + 1 < len(stages):
            try:
                state = _remote_state(api, repo_id, revision)
            except Exception:
                state = None
    if not report.failed:
        try:  # results / card may have changed after the last stage (e.g. final evaluation)
            info = _commit(api, output_dir, repo_id, revision, [], secrets, **kwargs)
            if info is not None:
                report.commits.append(info.oid)
        except Exception as err:
            reason = _describe(err, secrets)
            report.failed[0] = reason
            logger.warning("Refreshing the run files of %s failed: %s.", repo_id, reason)
    return report


_BACKGROUND: concurrent.futures.ThreadPoolExecutor | None = None
_BACKGROUND_LOCK = threading.Lock()


def push_pending_in_background(output_dir: str | os.PathLike, repo_id: str, **kwargs) -> concurrent.futures.Future:
    """`push_pending` on a single worker thread (pushes run one after another, in call order);
    returns a Future of its `PushReport`. Training goes on while the network is slow or down."""
    global _BACKGROUND
    with _BACKGROUND_LOCK:
        if _BACKGROUND is None:
            _BACKGROUND = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="slice-trl-hub")
    return _BACKGROUND.submit(push_pending, output_dir, repo_id, **kwargs)


# ----------------------------------------------------------------------------- task splits
def _task_notes(info: dict) -> str:
    items = [f"{k}: {v}" for k, v in (info or {}).items() if isinstance(v, (int, float, str, bool)) and v != ""]
    text = "; ".join(items).replace("|", "/").replace("\n", " ")
    return text[:120] + ("…" if len(text) > 120 else "") if text else ""


def push_task_splits(
    tasks,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    revision: str | None = None,
    *,
    template_path: str | os.PathLike | None = None,
) -> str:
    """Publish each task's prepared ``train`` / ``eval`` splits to the DATASET repo ``repo_id``, one
    configuration per task (named after the task), then a dataset card listing them in order.
    ``tasks`` are `slice_trl.tasks.base.Task` objects. Returns the repo id. Unchanged data makes no
    new commit (``datasets`` and huggingface_hub skip identical files)."""
    from datasets import DatasetDict
    from huggingface_hub import DatasetCard

    tasks = list(tasks)
    if not tasks:
        raise ValueError("push_task_splits needs at least one task.")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise ValueError(f"Task names must be unique (they become dataset configs): {names}.")
    secrets = _known_secrets(token)
    api = _hf_api(token)
    repo_id = api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True).repo_id or repo_id
    rows = []
    for task in tasks:
        if task.name == "data" or not re.fullmatch(r"[\w.-]+", task.name):
            raise ValueError(f"Task name {task.name!r} cannot be a dataset config name (letters, digits, _ . -; not 'data').")
        DatasetDict({"train": task.train, "eval": task.eval}).push_to_hub(
            repo_id, config_name=task.name, private=private, token=token, revision=revision,
            commit_message=f"Task {task.name}: train/eval splits",
        )
        first = task.train[0] if len(task.train) else {}
        rows.append({
            "name": task.name, "n_train": len(task.train), "n_eval": len(task.eval), "metric": task.metric,
            "format": "conversational" if isinstance(first.get("prompt"), list) else "prompt/completion",
            "notes": _scrub(_task_notes(_redact(task.info, secrets)), secrets),
        })
    readme = api.hf_hub_download(repo_id, "README.md", repo_type="dataset", revision=revision)
    data = DatasetCard.load(readme).data  # keeps the configs / dataset_info that datasets wrote
    data.tags = sorted(set(data.get("tags") or []) | set(DATASET_TAGS))  # no `tags` attribute until set
    data.task_categories = data.task_categories or ["text-generation"]
    data.pretty_name = data.pretty_name or f"{repo_id.split('/')[-1]} task splits"
    card = DatasetCard.from_template(
        data, template_path=str(_template_path(DATASET_CARD_TEMPLATE, template_path)),
        title=f"{repo_id.split('/')[-1]}: task splits of a continual run", tasks=rows, repo_id=repo_id,
    )
    card = DatasetCard(_scrub(str(card), secrets))
    card.push_to_hub(repo_id, repo_type="dataset", token=token, revision=revision,
                     commit_message="Dataset card: task splits")
    return repo_id


# ----------------------------------------------------------------------------- loading
def load_stage(
    repo_id: str,
    stage: int,
    revision: str | None = None,
    dtype: str = "float32",
    *,
    merge: bool = True,
    token: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    base_model: str | None = None,
    trust_remote_code: bool = False,
):
    """The model at the end of stage ``stage`` (1-indexed) of a published run, and its tokenizer.

    Reads ``run.json`` from the repo for the base model (``base_model=`` overrides it, e.g. when it
    was a local path), loads it with `slice_trl.models.load_model_and_tokenizer`, applies and merges
    the adapters of stages 1..k-1 in order, then applies stage k's adapter: merged into a plain
    model when ``merge=True`` (default), else returned as a `peft.PeftModel` (adapter "default"),
    e.g. to unload it again. All files come from one commit (``revision`` resolved once).
    Merging happens in ``dtype``: with bfloat16 expect rounding differences against the fp32 run.
    """
    from huggingface_hub import snapshot_download
    from peft import PeftModel

    from .models import load_model_and_tokenizer

    stage = int(stage)
    api = _hf_api(token)
    info = api.model_info(repo_id, revision=revision)
    folders = _stage_folders(s.rfilename for s in info.siblings or [])
    missing = [j for j in range(1, stage + 1) if j not in folders]
    if stage < 1 or missing:
        raise ValueError(f"{repo_id}@{revision or 'main'} cannot give stage {stage}: stage(s) {missing or [stage]} "
                         f"are not published (published: {sorted(folders)}).")
    wanted = [folders[j] for j in range(1, stage + 1)]
    local = Path(snapshot_download(
        repo_id, revision=info.sha, token=token, cache_dir=cache_dir,
        allow_patterns=["run.json"] + [f"{f}/{ADAPTER_CONFIG}" for f in wanted] + [f"{f}/{ADAPTER_WEIGHTS}" for f in wanted],
    ))
    if base_model is None:
        if not (local / "run.json").is_file():
            raise FileNotFoundError(f"{repo_id} has no run.json: pass base_model=...")
        base_model = _read_json(local / "run.json").get("base_model")
        if not base_model:
            raise ValueError(f"{repo_id}/run.json names no base_model: pass base_model=...")
    model, tokenizer = load_model_and_tokenizer(base_model, dtype=dtype, trust_remote_code=trust_remote_code)
    for folder in wanted[:-1]:
        model = PeftModel.from_pretrained(model, str(local / folder)).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(local / wanted[-1]))
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


__all__ = [
    "PushReport",
    "StageDir",
    "convert_adapter_files",
    "convert_stage_adapter",
    "finished_stages",
    "load_stage",
    "published_adapter_dir",
    "push_pending",
    "push_pending_in_background",
    "push_stage",
    "push_task_splits",
    "render_model_card",
]
