"""A finished stage, re-applied the two ways it can be, and the rules that read and write the
stage folders (their names and files: `slice_trl.utils.run_folder`).

Resume re-applies a stage exactly as the live run did (absorb A0 B0 with the same function,
load the trained A B, merge with PEFT), so a resumed run is bitwise equal to an uninterrupted
one. Publishing uses the converted adapter.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from safetensors.torch import load_file

from slice_trl.utils import distributed
from slice_trl.utils.jsonio import read_json, write_json_atomic
from slice_trl.utils.run_folder import RunFolder, StageFolder


def score_fields(scores: dict) -> dict:
    """{task: TaskScore} -> the "scores", "n_scored", "samples", "predictions" (every scored
    example) and, for label tasks, "off_label" (predictions outside the label set) entries of a
    stage or base record."""
    off = {n: s.off_label for n, s in scores.items() if s.off_label is not None}
    return {"scores": {n: s.score for n, s in scores.items()}, "n_scored": {n: s.n for n, s in scores.items()},
            "samples": {n: s.samples for n, s in scores.items()}, **({"off_label": off} if off else {}),
            "predictions": {n: s.predictions for n, s in scores.items()}}


def base_measurement(path: Path, identity: dict, measure, reuse: bool = True) -> dict:
    """THE reuse rule of ``output_dir/base/``: the record at ``path`` is reused when ``reuse`` is
    set and its identity keys equal ``identity`` (the settings it was measured with); otherwise
    ``measure()`` (a dict) runs on every process (evaluation is collective) and the main process
    writes ``{**identity, **measure()}``. Returns the record, the same on every process."""
    cached = None
    if distributed.rank_and_world()[0] == 0 and reuse and path.is_file():
        cached = read_json(path)
        cached = cached if all(cached.get(k) == v for k, v in identity.items()) else None
    cached = distributed.broadcast_object(cached)
    if cached is not None:
        return cached
    record = {**identity, **measure()}
    if distributed.rank_and_world()[0] == 0:
        write_json_atomic(path, record)
    distributed.barrier()
    return record


def finished_prefix(output_dir: str | Path, task_names: list[str]) -> int:
    """Number of leading stages that are finished on disk; later partial stage folders are
    removed (an unfinished stage restarts from scratch)."""
    run = RunFolder(output_dir)
    done = 0
    for t, name in enumerate(task_names):
        if run.stage(t, name).finished:
            done += 1
        else:
            break
    for t in range(done, len(task_names)):
        partial = run.stage(t, task_names[t]).path
        if partial.exists():
            shutil.rmtree(partial)
    return done


class DamagedStageError(ValueError):
    """A finished stage folder (its record present) whose files cannot be re-applied."""


def _damage(stage: StageFolder) -> str | None:
    """Why a finished stage folder cannot be resumed from, or None: the record must parse, both
    adapters' weights must exist, every safetensors file must be complete (its header is read; a
    truncated file fails there), and every file must still hold the bytes the stage wrote (the
    sha256 its record keeps, `StageFolder.changed_files`: a change of content alone is found too)."""
    from safetensors import safe_open

    try:
        record = stage.read_record()
    except ValueError as err:
        return f"{stage.RECORD} is not valid JSON ({err})"
    for sub in (stage.INIT, stage.RAW):
        if not (stage.path / sub / stage.WEIGHTS).is_file():
            return f"{sub}/{stage.WEIGHTS} is missing"
    for file in sorted(stage.path.rglob("*.safetensors")):
        try:
            with safe_open(str(file), "pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError and OSError alike
            return f"{file.relative_to(stage.path)} is damaged ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
    changed = stage.changed_files(record) if isinstance(record, dict) else []
    return "; ".join(changed) or None


def check_finished(output_dir: str | Path, task_names: list[str]) -> int:
    """Number of leading finished stages, after checking that each can be re-applied; raises
    `DamagedStageError` naming the first damaged stage folder and the fix. Only stage folders
    are looked at (other folders of output_dir are not stages). Reads only."""
    done = 0
    for t, name in enumerate(task_names):
        stage = RunFolder(output_dir).stage(t, name)
        if not stage.finished:
            break
        why = _damage(stage)
        if why is not None:
            raise DamagedStageError(
                f"stage {t + 1} ({name}): finished stage folder {str(stage.path)!r} is damaged: {why}. Delete that "
                f"folder to retrain stage {t + 1} (and the stages after it) on the next run, restore its files, or "
                "start over with --overwrite or a new output_dir.")
        done += 1
    return done


def save_initial(peft_model, adapter_name: str, stage: StageFolder) -> None:
    peft_model.save_pretrained(str(stage.init), selected_adapters=[adapter_name], safe_serialization=True)


def save_trained(peft_model, adapter_name: str, stage: StageFolder) -> None:
    """Save the raw trained adapter, then the converted one (PEFT's own conversion, the one it
    uses for PiSSA/LoRA-GA: rank and alpha double, the scaling is unchanged)."""
    peft_model.save_pretrained(str(stage.raw), selected_adapters=[adapter_name], safe_serialization=True)
    peft_model.save_pretrained(
        str(stage.converted), selected_adapters=[adapter_name], safe_serialization=True,
        path_initial_model_for_weight_conversion=str(stage.init),
    )


def _adapter_tensors(folder: Path) -> dict:
    return load_file(str(folder / StageFolder.WEIGHTS))


def reapply_stage(base_model, lora_config, stage: StageFolder, merge: bool = True):
    """Rebuild the end of a finished stage on ``base_model`` (the model as it stood before the
    stage): attach a fresh adapter, absorb the saved A0 B0, load the trained A B, then merge.
    Returns the plain merged model (or the PeftModel when ``merge`` is False)."""
    import copy

    from peft import get_peft_model, set_peft_model_state_dict

    from slice_trl.models.lora import ADAPTER, lora_layers, write_and_absorb

    peft_model = get_peft_model(base_model, copy.deepcopy(lora_config))
    init = _adapter_tensors(stage.init)
    layers = lora_layers(peft_model, ADAPTER)
    for name, layer in layers.items():
        prefix = f"base_model.model.{name}"
        a0 = init[f"{prefix}.lora_A.weight"]
        b0 = init[f"{prefix}.lora_B.weight"]
        write_and_absorb(layer, ADAPTER, a0.to(layer.lora_A[ADAPTER].weight.device),
                         b0.to(layer.lora_B[ADAPTER].weight.device))
    result = set_peft_model_state_dict(peft_model, _adapter_tensors(stage.raw), adapter_name=ADAPTER)
    if result.unexpected_keys:
        raise ValueError(f"{stage.raw} does not match the LoRA config: unexpected keys {result.unexpected_keys[:3]}")
    return merge_into_base(peft_model) if merge else peft_model


def merge_into_base(peft_model):
    """``merge_and_unload()`` that also works on a DeepSpeed ZeRO-3-partitioned model: each LoRA
    layer's weights are gathered (module by module, to bound memory) for its merge, and rank 0's
    merged weight is re-partitioned to every rank (PEFT's merge does not gather by itself).
    Without ZeRO-3 every rank merges its own full copy, identically. Returns the plain model."""
    if not distributed.zero3_enabled():
        return peft_model.merge_and_unload()
    from peft.tuners.lora import LoraLayer

    for module in peft_model.modules():
        if isinstance(module, LoraLayer):
            with distributed.gathered(list(module.parameters()), modifier_rank=0):
                module.merge()
    return peft_model.unload()
