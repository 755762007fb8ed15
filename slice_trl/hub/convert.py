"""Converting a trained stage adapter into one that applies to the ORIGINAL base weights.

A non-zero LoRA initialisation (SLICE, LoRA-GA, LoRAM) absorbs ``scaling * B0 @ A0`` into the frozen
weights before training, so the raw trained adapter only fits that modified base. The converted
adapter ``A' = [A; A0]``, ``B' = [B | -B0]`` (rank and alpha doubled) applies to the base as it was
before the stage: that is what is published.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

from slice_trl.utils.jsonio import read_json
from slice_trl.utils.run_folder import StageFolder

logger = logging.getLogger(__name__)

ADAPTER_CONFIG, ADAPTER_WEIGHTS = StageFolder.ADAPTER_CONFIG, StageFolder.WEIGHTS


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


def convert_adapter_files(
    adapter_dir: str | os.PathLike, init_dir: str | os.PathLike, out_dir: str | os.PathLike
) -> Path:
    """Convert a saved stage adapter (trained on a base whose weights had ``scaling * B0 @ A0``
    absorbed) into an adapter for the UNMODIFIED base, from the files only (no model needed):
    ``A' = [A; A0]``, ``B' = [B | -B0]``, ``r' = 2r``, ``alpha' = 2 alpha`` (``sqrt(2) alpha`` with
    rsLoRA), so ``scaling' B' A' = scaling (B A - B0 A0)``: the same adapter as PEFT's
    ``save_pretrained(..., path_initial_model_for_weight_conversion=init_dir)`` writes (tests/test_hub.py
    checks both). ``init_dir`` is the PEFT save of the adapter right after initialisation (A0, B0).
    Returns ``out_dir``."""
    import torch
    from safetensors.torch import load_file, save_file

    a_dir, i_dir = _adapter_files_dir(adapter_dir), _adapter_files_dir(init_dir)
    cfg = read_json(a_dir / ADAPTER_CONFIG)
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


def published_adapter_dir(stage: StageFolder) -> Path:
    """The converted adapter of a stage; made from the raw + init adapters when it is missing."""
    published = stage.converted
    if (published / ADAPTER_CONFIG).is_file() and (published / ADAPTER_WEIGHTS).is_file():
        return published
    raw, init = stage.raw, stage.init
    if raw.is_dir() and init.is_dir():
        logger.info("Stage %d has no %s/: converting %s/ with %s/.", stage.number, stage.CONVERTED, stage.RAW,
                    stage.INIT)
        return convert_adapter_files(raw, init, published)
    raise FileNotFoundError(f"Stage {stage.number} ({stage.path}) has neither {stage.CONVERTED}/ nor "
                            f"{stage.RAW}/ + {stage.INIT}/ to publish.")
