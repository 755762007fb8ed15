"""The model card of a run (and the dataset card of its task splits).

The templates are the repository's top-level ``model_cards/`` folder (read them, or pass your own
with ``template_path``); the package reaches it as ``slice_trl/model_cards`` (a link in a checkout,
copies in a wheel) through `importlib.resources`, so a wheel install renders the same cards. Scores are shown
x100, like the heatmap; the YAML header holds the licence and a ``model-index`` with the final
scores (per task, AP/FP/forgetting and GP/IP when they were measured). Rendering is
deterministic (no dates), so an unchanged run renders the same card and makes no commit.
"""

from __future__ import annotations

import functools
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any

from slice_trl.utils.jsonio import read_json
from slice_trl.utils.run_folder import RunFolder
from slice_trl.utils.registry import initializers
from slice_trl.evaluation.cl_metrics import FIELD_METRICS
from slice_trl.hub.files import BaseModel, base_model, public_run, read_run, sorted_modules
from slice_trl.hub.redaction import known_secrets, public, scrub

MODEL_CARD_TEMPLATE = "continual_run.md"
DATASET_CARD_TEMPLATE = "task_splits.md"
MODEL_TAGS = ["continual-learning", "lora", "slice", "peft", "slice-trl"]
DATASET_TAGS = ["continual-learning", "slice-trl"]


def template_text(name: str, template_path: str | os.PathLike | None = None) -> str:
    """A card template: ``template_path`` when given, else the one shipped with the package."""
    if template_path is not None:
        return Path(template_path).read_text(encoding="utf-8")
    return resources.files("slice_trl").joinpath("model_cards", name).read_text(encoding="utf-8")


def x100(value: Any) -> str:
    """A score (fraction) as shown in the heatmap: x100, one decimal."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return "–"
    return "nan" if math.isnan(value) else f"{100 * value:.1f}"


def _signed_x100(value: Any) -> str:
    text = x100(value)
    return f"+{text}" if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else text


def _setting(value: Any) -> str:
    return ", ".join(str(v) for v in value) if isinstance(value, list) else str(value)


def _dig(obj: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(key)
    return obj


def _number(*values: Any) -> float | None:
    """The first real number among ``values``."""
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


@functools.lru_cache(maxsize=32)
def _hub_license(hub_id: str) -> str | None:
    """The licence in the base model's own card on the Hub (best effort: None when offline)."""
    try:
        from huggingface_hub import HfApi

        data = HfApi().model_info(hub_id).card_data
        return getattr(data, "license", None) if data is not None else None
    except Exception:
        return None


def licence(base: BaseModel, explicit: str | None = None) -> tuple[str, str]:
    """(licence id, where it comes from): the publisher's choice, else the base model's licence
    (an adapter is a derivative of its base), else "unknown"."""
    if explicit:
        return explicit, ""
    if base.license:
        return base.license, f"the licence of the base model {base.hub_id}"
    found = _hub_license(base.hub_id) if base.hub_id else None
    if found:
        return str(found), f"the licence of the base model {base.hub_id}"
    return "unknown", "the base model's licence could not be determined: see the base model"


# ----------------------------------------------------------------------------- GP / IP
def _benchmarks(general: dict) -> list[dict]:
    """Per-benchmark rows {name, metric, gp, ip, base_gp, base_ip} from the results' ``"general"``:
    its "benchmarks" mapping when present, else the ``zero_shot`` / ``few_shot`` detail."""
    rows = []
    detail = general.get("benchmarks")
    if isinstance(detail, dict) and detail:
        for name, entry in detail.items():
            if not isinstance(entry, dict):
                continue
            rows.append({
                "name": str(name),
                "metric": entry.get("metric") or _dig(entry, "zero_shot", "metric") or "",
                "gp": _number(entry.get("GP"), _dig(entry, "zero_shot", "score")),
                "ip": _number(entry.get("IP"), _dig(entry, "few_shot", "score")),
                "base_gp": _number(_dig(entry, "base", "GP"), _dig(entry, "base", "zero_shot", "score")),
                "base_ip": _number(_dig(entry, "base", "IP"), _dig(entry, "base", "few_shot", "score")),
            })
        return rows
    zero, few = general.get("zero_shot") or {}, general.get("few_shot") or {}
    for name in dict.fromkeys([*zero, *few]):
        rows.append({
            "name": str(name),
            "metric": _dig(zero, name, "metric") or _dig(few, name, "metric") or "",
            "gp": _number(_dig(zero, name, "score")), "ip": _number(_dig(few, name, "score")),
            "base_gp": _number(_dig(general, "base", "zero_shot", name, "score")),
            "base_ip": _number(_dig(general, "base", "few_shot", name, "score")),
        })
    return rows


def general_section(general: Any) -> dict | None:
    """What the card shows of GP/IP: final, base and change (each only when recorded), x100."""
    if not isinstance(general, dict):
        return None
    final = {k: _number(general.get(k)) for k in ("GP", "IP")}
    base = {k: _number(_dig(general, "base", k)) for k in ("GP", "IP")}
    change = {k: _number(_dig(general, "change", k)) for k in ("GP", "IP")}
    columns = [("after the last stage", final, x100), ("base model", base, x100), ("change", change, _signed_x100)]
    columns = [c for c in columns if any(v is not None for v in c[1].values())]
    if not columns:
        return None
    benchmarks = _benchmarks(general)
    bench_cols = [(label, key, fmt) for label, key, fmt in (
        ("zero-shot (GP)", "gp", x100), ("few-shot (IP)", "ip", x100),
        ("base zero-shot", "base_gp", x100), ("base few-shot", "base_ip", x100))
        if any(b[key] is not None for b in benchmarks)]
    return {
        "columns": [c[0] for c in columns],
        "summary": [{"name": k, "cells": [fmt(values[k]) for _, values, fmt in columns]} for k in ("GP", "IP")],
        "benchmarks": [{"name": b["name"], "metric": b["metric"] or "–", "cells": [fmt(b[key]) for _, key, fmt in bench_cols]}
                       for b in benchmarks],
        "bench_columns": [c[0] for c in bench_cols],
        "final": final, "base": base, "change": change, "rows": benchmarks,
    }


# ----------------------------------------------------------------------------- model-index
def eval_results(task_names: list[str], metrics: dict, results: dict, general: dict | None,
                 dataset_repo_id: str | None) -> list:
    """``model-index`` entries (x100, 2 decimals): each task's score after the last completed
    stage, the sequence's AP/FP/forgetting, and GP/IP with their benchmarks."""
    from huggingface_hub import EvalResult

    R = results.get("R") or []
    rows = [row for row in R if isinstance(row, list) and any(v is not None for v in row)]
    out = []
    if rows:
        last, stage = rows[-1], len(rows)
        for j, task in enumerate(task_names):
            value = _number(last[j] if j < len(last) else None)
            if value is None:
                continue
            metric = metrics.get(task) or "score"
            out.append(EvalResult(
                task_type="text-generation", dataset_type=dataset_repo_id or f"slice-trl/{task}", dataset_name=task,
                dataset_config=task if dataset_repo_id else None, dataset_split="eval", metric_type=metric,
                metric_name=f"{metric} after stage {stage} (x100)", metric_value=round(100 * value, 2)))
        for key, name in (("AP", "AP"), ("FP", "FP"), ("forgetting", "Forgetting"), *FIELD_METRICS.items()):
            value = _number(results.get(key))
            if value is not None:
                out.append(EvalResult(
                    task_type="text-generation", dataset_type=dataset_repo_id or "slice-trl/continual-sequence",
                    dataset_name=f"continual sequence of {len(task_names)} tasks", metric_type=key.lower(),
                    metric_name=f"{name} (x100)", metric_value=round(100 * value, 2)))
    if general:
        names = [b["name"] for b in general["rows"]]
        for key, what in (("GP", "zero-shot mean"), ("IP", "few-shot mean")):
            if general["final"][key] is not None:
                out.append(EvalResult(
                    task_type="text-generation", dataset_type="lm-eval",
                    dataset_name="lm-eval: " + (", ".join(names) or "general benchmarks"), metric_type=key.lower(),
                    metric_name=f"{key} ({what}, x100)", metric_value=round(100 * general["final"][key], 2)))
        for b in general["rows"]:
            for key, shots in (("gp", "zero-shot"), ("ip", "few-shot")):
                if b[key] is not None:
                    out.append(EvalResult(
                        task_type="text-generation", dataset_type=b["name"], dataset_name=b["name"],
                        metric_type=str(b["metric"] or "score").split(",")[0], metric_config=shots,
                        metric_name=f"{b['metric'] or 'score'} {shots} (x100)", metric_value=round(100 * b[key], 2)))
    return out


# ----------------------------------------------------------------------------- model card
def render_model_card(
    output_dir: str | os.PathLike,
    repo_id: str,
    published: dict[int, str],
    *,
    dataset_repo_id: str | None = None,
    token: str | bool | None = None,
    template_path: str | os.PathLike | None = None,
    license: str | None = None,
    run: dict | None = None,
    results: dict | None = None,
):
    """The ``huggingface_hub.ModelCard`` of a run, listing the stages in ``published``
    ({stage number: repo folder}). ``dataset_repo_id`` names the task-splits dataset (pass it only
    once the splits are on the Hub); ``license`` overrides the base model's licence. ``run`` and
    ``results``: the run's facts and results as read already (default: read from ``output_dir``)."""
    from huggingface_hub import ModelCard, ModelCardData, constants

    here = RunFolder(output_dir)
    secrets = known_secrets(token)
    raw_run = run if run is not None else read_run(here)
    run = public_run(raw_run, secrets)
    base = base_model(raw_run)
    results = public(results if results is not None else here.read_results() or {}, secrets)
    task_names = list(results.get("task_names") or run.get("task_names") or [])
    metrics = {name: _dig(run, "tasks", name, "metric") for name in task_names}
    R = results.get("R") or []
    local = {s.number: s for s in here.finished_stages()}

    stages = []
    for number, folder in sorted(published.items()):
        task = task_names[number - 1] if 0 < number <= len(task_names) else folder
        rank = "–"
        converted = local[number].converted / local[number].ADAPTER_CONFIG if number in local else None
        if converted is not None and converted.is_file():
            rank = str(read_json(converted).get("r", "–"))
        own = R[number - 1][number - 1] if len(R) >= number and R[number - 1] and len(R[number - 1]) >= number else None
        stages.append({"number": number, "task": task, "folder": folder, "rank": rank, "own_score": x100(own),
                       "metric": metrics.get(task) or "–"})
    missing = [str(n) for n in sorted(local) if n not in published]
    r_table = [
        {"label": f"{i + 1} ({task_names[i]})" if i < len(task_names) else str(i + 1),
         "cells": [x100(row[j]) if row and j < len(row) else "–" for j in range(len(task_names))]}
        for i, row in enumerate(R) if row and any(v is not None for v in row)
    ] if task_names else []
    summary = [{"name": name, "value": (_signed_x100 if key == "forgetting" else x100)(results[key])}
               for key, name in (("AP", "AP"), ("FP", "FP"), ("forgetting", "Forgetting"))
               if results.get(key) is not None]
    # the field's metrics (docs/benchmarks.md), "n/a" where the run could not measure them
    summary += [{"name": name, "value": "n/a" if results[key] is None else (_signed_x100 if "W" in key else x100)(
        results[key])} for key, name in FIELD_METRICS.items() if key in results]
    general = general_section(results.get("general"))

    lora = run.get("lora") or {}
    recipe = run.get("recipe") or {}
    init_method = _dig(run, "init", "method") or _dig(recipe, "init", "method") or run.get("init_method")
    lora_rows = [{"name": name, "value": _setting(sorted_modules(lora[key]) if key == "target_modules" else lora[key])}
                 for key, name in (("r", "rank r"), ("lora_alpha", "alpha"), ("use_rslora", "rsLoRA"),
                                   ("lora_dropout", "dropout"), ("target_modules", "target modules"))
                 if lora.get(key) is not None]
    if init_method:
        lora_rows.insert(0, {"name": "initialisation", "value": str(init_method)})
    license_id, license_source = licence(base, license)

    card_data = ModelCardData(
        base_model=base.hub_id,
        library_name="peft",
        license=license_id,
        tags=list(MODEL_TAGS),
        datasets=[dataset_repo_id] if dataset_repo_id else None,
        pipeline_tag="text-generation",
        model_name=repo_id.split("/")[-1],
        eval_results=eval_results(task_names, metrics, results, general, dataset_repo_id) or None,
    )
    example = max(published) if published else 1
    card = ModelCard.from_template(
        card_data,
        template_str=template_text(MODEL_CARD_TEMPLATE, template_path),
        title=f"{repo_id.split('/')[-1]}: continual LoRA, {len(task_names)} tasks",
        repo_id=repo_id,
        base_model_display=base.hub_id or base.name or "<base model>",
        base_model_link=f"{constants.ENDPOINT}/{base.hub_id}" if base.hub_id else None,
        gguf=base.gguf, gguf_package=base.gguf_package,
        task_names=task_names,
        init_method_display=initializers.trait(str(init_method), "display_name") or str(init_method or "LoRA"),
        seed=run.get("seed"),
        stages=stages,
        stages_missing=missing,
        r_table=r_table,
        summary=summary,
        general=general,
        has_heatmap=here.heatmap.is_file(),
        has_recipe=run.get("recipe") is not None,
        has_base_scores=here.base_dir.is_dir(),
        lora_rows=lora_rows,
        example_stage=example,
        dataset_repo_id=dataset_repo_id,
        dataset_url=f"{constants.ENDPOINT}/datasets/{dataset_repo_id}" if dataset_repo_id else None,
        license=license_id, license_source=license_source,
    )
    return ModelCard(scrub(str(card), secrets))
