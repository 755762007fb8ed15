"""Reading a published run back: `load_stage` (the model at the end of stage k), `list_run`
(what ``python -m slice_trl.hub ls`` prints) and `pull` (download stage k, optionally write the
merged full model)."""

from __future__ import annotations

import os
from pathlib import Path

from slice_trl.utils.run_folder import RunFolder, StageFolder, published_stages
from slice_trl.hub.redaction import is_local_placeholder


def _published(repo_id: str, revision: str | None, token):
    """(repo info at one commit, {stage: folder}) of a published run."""
    from huggingface_hub import HfApi

    info = HfApi(token=token, library_name="slice-trl").model_info(repo_id, revision=revision)
    return info, published_stages(s.rfilename for s in info.siblings or [])


def _download(repo_id: str, sha: str, folders: list[str], token, cache_dir=None, local_dir=None,
              in_folders: str = "*", extra: tuple[str, ...] = ()) -> Path:
    """The run's facts and results, the files ``in_folders`` (a glob) of each stage folder in
    ``folders`` and the ``extra`` patterns, all from commit ``sha``."""
    from huggingface_hub import snapshot_download

    patterns = [RunFolder.RUN, RunFolder.RESULTS, *extra] + [f"{f}/{in_folders}" for f in folders]
    return Path(snapshot_download(repo_id, revision=sha, token=token, cache_dir=cache_dir, local_dir=local_dir,
                                  allow_patterns=patterns))


def download_run_records(repo_id: str, revision: str | None = None, token: str | None = None,
                         cache_dir: str | os.PathLike | None = None) -> tuple[Path, list[Path]]:
    """The JSON files of a published run, all from one commit and no adapter weights: the run's
    facts, its results, the base model's scores and every published stage's record. Returns (the
    local snapshot folder, the stage records' paths in stage order)."""
    info, folders = _published(repo_id, revision, token)
    if not folders:
        raise ValueError(f"{repo_id}@{revision or 'main'} holds no published stage (no stage-NN-<task>/ folder): "
                         "not a slice-trl run repo, or nothing is pushed yet.")
    local = _download(repo_id, info.sha, list(folders.values()), token, cache_dir=cache_dir,
                      in_folders=StageFolder.RECORD, extra=(RunFolder.BASE_JSON,))
    return local, [local / RunFolder.hub_record(folders[k]) for k in sorted(folders)]


def _stages_up_to(repo_id: str, revision: str | None, stage: int, folders: dict[int, str]) -> list[str]:
    missing = [j for j in range(1, stage + 1) if j not in folders]
    if stage < 1 or missing:
        raise ValueError(f"{repo_id}@{revision or 'main'} cannot give stage {stage}: stage(s) {missing or [stage]} "
                         f"are not published (published: {sorted(folders)}).")
    return [folders[j] for j in range(1, stage + 1)]


def _base_model_of(local: Path, repo_id: str) -> str:
    run = RunFolder(local).read_run()
    if run is None:
        raise FileNotFoundError(f"{repo_id} has no {RunFolder.RUN}: pass base_model=... (the Hub id of the base "
                                "model).")
    base = run.get("base_model")
    if not base:
        raise ValueError(f"{repo_id}/{RunFolder.RUN} names no base_model: pass base_model=... (the Hub id of the base "
                         "model).")
    if is_local_placeholder(base):
        raise ValueError(f"{repo_id} was trained on a local checkpoint ({base!r} in {RunFolder.RUN}), which is not on "
                         "the Hub: "
                         "pass base_model=... (a Hub id or a local folder holding the same weights).")
    return base


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

    Reads the run's facts (`RunFolder.run_file`) from the repo for the base model (``base_model=``
    overrides it; needed when the run was trained on a local checkpoint), loads it with
    `slice_trl.models.loading.load_model_and_tokenizer` (so the bundled GGUF alias gives the very weights
    the run used), applies and merges the adapters of stages 1..k-1 in order, then applies stage
    k's adapter: merged into a plain model when ``merge=True`` (default), else returned as a
    `peft.PeftModel` (adapter "default"). All files come from one commit (``revision`` resolved
    once). Merging happens in ``dtype``: with bfloat16 expect rounding differences."""
    from peft import PeftModel

    from slice_trl.models.loading import load_model_and_tokenizer

    stage = int(stage)
    info, folders = _published(repo_id, revision, token)
    wanted = _stages_up_to(repo_id, revision, stage, folders)
    local = _download(repo_id, info.sha, wanted, token, cache_dir=cache_dir)
    base_model = base_model or _base_model_of(local, repo_id)
    model, tokenizer = load_model_and_tokenizer(base_model, dtype=dtype, trust_remote_code=trust_remote_code)
    for folder in wanted[:-1]:
        model = PeftModel.from_pretrained(model, str(local / folder)).merge_and_unload()
    model = PeftModel.from_pretrained(model, str(local / wanted[-1]))
    if merge:
        model = model.merge_and_unload()
    model.eval()
    return model, tokenizer


def list_run(repo_id: str, revision: str | None = None, token: str | None = None) -> dict:
    """What a published run holds: ``{"repo_id", "sha", "stages": {k: folder}, "run": the run's
    facts, "results": its results}`` (the two are {} when absent)."""
    from slice_trl.hub.push import quiet_hub

    info, folders = _published(repo_id, revision, token)
    with quiet_hub():
        local = _download(repo_id, info.sha, [], token)
    snapshot = RunFolder(local)
    return {"repo_id": repo_id, "sha": info.sha, "stages": folders,
            "run": snapshot.read_run() or {}, "results": snapshot.read_results() or {}}


def format_listing(listing: dict) -> str:
    """`list_run`'s answer as text: the stages, R (x100), AP/FP/forgetting and GP/IP when present."""
    from slice_trl.evaluation.results import ResultsMatrix
    from slice_trl.hub.card import x100

    run, results = listing["run"], listing["results"]
    names = list(results.get("task_names") or run.get("task_names") or [])
    lines = [f"{listing['repo_id']} @ {listing['sha'][:10]}: {len(listing['stages'])} of {len(names) or '?'} stage(s) "
             f"published; base model {run.get('base_model_hub_id') or run.get('base_model') or '?'}"]
    for number, folder in listing["stages"].items():
        task = names[number - 1] if 0 < number <= len(names) else "?"
        lines.append(f"  stage {number}: {task:<30} {folder}/")
    if results.get("R"):
        lines += ["", ResultsMatrix.from_dict(results).table()]
    general = results.get("general") or {}
    scores = [f"{k} {x100(general.get(k))}" for k in ("GP", "IP") if general.get(k) is not None]
    base = [f"{k} {x100((general.get('base') or {}).get(k))}" for k in ("GP", "IP")
            if (general.get("base") or {}).get(k) is not None]
    if scores:
        lines.append("general ability (x100): " + "  ".join(scores) + (f"  (base model: {'  '.join(base)})" if base else ""))
    if not listing["stages"]:
        lines.append("  (no stage published yet)")
    return "\n".join(lines)


def pull(repo_id: str, stage: int, *, revision: str | None = None, out: str | os.PathLike | None = None,
         merge: str | os.PathLike | None = None, token: str | None = None, base_model: str | None = None,
         dtype: str = "float32") -> dict:
    """Download stage ``stage`` (and the earlier stages it builds on) of a published run into
    ``out`` (default: the Hugging Face cache). With ``merge``, also write the full model at the
    end of that stage (base + stages 1..k merged, with its tokenizer) to that folder: a plain
    transformers checkpoint to serve or fine-tune further. Returns ``{"adapter": path of stage
    k's adapter, "merged": merge folder or None}``."""
    info, folders = _published(repo_id, revision, token)
    wanted = _stages_up_to(repo_id, revision, int(stage), folders)
    local = _download(repo_id, info.sha, wanted, token, local_dir=out)
    result = {"adapter": local / wanted[-1], "merged": None}
    if not (result["adapter"] / StageFolder.ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{repo_id}: {wanted[-1]}/{StageFolder.ADAPTER_CONFIG} did not download.")
    if merge is not None:
        model, tokenizer = load_stage(repo_id, int(stage), revision=info.sha, dtype=dtype, token=token,
                                      base_model=base_model)
        model.save_pretrained(str(merge))
        tokenizer.save_pretrained(str(merge))
        result["merged"] = Path(merge)
    return result
