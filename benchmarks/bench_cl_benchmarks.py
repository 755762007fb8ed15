"""The field's continual benchmarks end to end on this machine (issue 28): SuperNI-15 order 1 (all
15 tasks) and Long Sequence over its five offline tasks, with SmolLM2-135M-Instruct at smoke scale.

Every run is the real entry point, ``python -m slice_trl.run RECIPE --seed S --init.seed S ...``, in
its own process with one thread, one run at a time. Arms (the same settings for every arm):

- ``vanilla``: plain LoRA at 10x the recipe's learning rate (6e-3), where it learns (vanilla moves W
  11-21x less per step than the variance-matched inits at the same rate; README, "Evidence");
- ``lora_ga``, ``slice_c1.0``: the rescaled inits at the recipe's 6e-4;
- ``slao``: Merge-before-Forget (vanilla-initialised adapters, merged in adapter space) at 6e-3, as vanilla.

The base row R_0 (the untrained model on every task) is scored by the first run and copied to the
others (the trainer checks that the tasks and evaluation settings match).

Resumable like bench_continual.py: a finished run's summary (R, base row, scores before training,
every metric, per-stage timings, settings) goes to ``<results>/<benchmark>/runs/<arm>_seed<S>.json``
(committed); a run whose summary is there with the same settings is not run again, an unfinished
run folder resumes from its last finished stage. After every finished run `slice_trl.compare` writes
``<results>/<benchmark>/compare.{md,json}``, ``R_<arm>.png`` and ``fp_vs_ap.png``, and this script
appends the seconds per stage (init, train, eval, task evaluations) to ``compare.md``.

    python benchmarks/bench_cl_benchmarks.py                                 # both benchmarks, 4 arms, seed 0
    python benchmarks/bench_cl_benchmarks.py --benchmarks superni15 --arms vanilla slice_c1.0
    python benchmarks/bench_cl_benchmarks.py --benchmarks superni15 --first-tasks 3 --max-steps 1 \\
        --max-eval 4 --runs-dir /tmp/cl_smoke/runs --results-dir /tmp/cl_smoke/results   # smoke check
    python benchmarks/bench_cl_benchmarks.py --report-only
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # slice_trl from this checkout, also when run as a script
sys.path.insert(0, str(ROOT / "benchmarks"))  # the shared launcher, also when imported from elsewhere

from slice_trl.compare import compare as compare_runs, summarise_run  # noqa: E402
from slice_trl.utils.jsonio import write_json_atomic  # noqa: E402
from slice_trl.tasks.sequences import expand_sequence  # noqa: E402

from bench_continual import run_entry_point  # noqa: E402  (one way to launch a benchmark run)

RESULTS = ROOT / "benchmarks" / "results"
# ../shared/data next to the checkout (main), or next to the worktrees' folder (/work/wt/<name>)
SHARED = next((p for p in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data") if p.is_dir()),
              ROOT.parent / "shared" / "data")
BENCHMARKS = {
    "superni15": {"recipe": "benchmarks/recipes/superni15_order1_cpu.yaml", "data": "superni15"},
    "long_sequence": {"recipe": "benchmarks/recipes/long_sequence5_cpu.yaml", "data": "long_sequence"},
}
ARMS = {
    "vanilla": ["--init.method", "vanilla", "--learning_rate", "0.006"],
    "lora_ga": ["--init.method", "lora_ga"],
    "slice_c1.0": ["--init.method", "slice", "--init.c", "1.0"],
    "slao": ["--init.method", "vanilla", "--strategy.name", "slao", "--learning_rate", "0.006"],
}


def recipe_for(bench: str, first_tasks: int | None, max_eval: int | None, runs: Path) -> Path:
    """The benchmark's recipe, or (``--first-tasks`` / ``--max-eval``) a copy under ``runs`` with the
    first N tasks of its sequence and the eval cap changed."""
    path = ROOT / BENCHMARKS[bench]["recipe"]
    if first_tasks is None and max_eval is None:
        return path
    raw = yaml.safe_load(path.read_text())
    tasks = expand_sequence(raw.pop("sequence")) if "sequence" in raw else raw.pop("tasks")
    tasks = tasks[:first_tasks] if first_tasks else tasks
    if max_eval is not None:
        tasks = [{**t, "max_eval": max_eval} for t in tasks]
        raw["evaluation"]["max_samples"] = max_eval
    out = runs / bench / f"recipe_first{first_tasks}_eval{max_eval}.yaml"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump({**raw, "tasks": tasks}, sort_keys=False))
    return out


def settings(recipe: Path, extra: list[str], arm: str, seed: int) -> dict:
    """What makes a run the same run: the parsed recipe, the arm's and the invocation's overrides, the seed."""
    content = json.dumps(yaml.safe_load(recipe.read_text()), sort_keys=True)
    return {"recipe_sha256": hashlib.sha256(content.encode()).hexdigest(), "overrides": ARMS[arm] + extra,
            "seed": seed}


def code_commit() -> str | None:
    """The checkout's commit (with "+dirty" when it has uncommitted changes), or None outside git."""
    import subprocess

    git = ["git", "-C", str(ROOT)]
    sha = subprocess.run([*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    if sha.returncode:
        return None
    dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True)
    return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def launch(bench: str, arm: str, seed: int, recipe: Path, extra: list[str], runs: Path, results: Path) -> dict:
    """One run in its own process (one thread), unless its summary with the same settings exists."""
    summary_file = results / bench / "runs" / f"{arm}_seed{seed}.json"
    want = settings(recipe, extra, arm, seed)
    if summary_file.is_file() and json.loads(summary_file.read_text()).get("bench_settings") == want:
        return {"ok": True, "reused": True}
    out = runs / bench / f"{arm}_seed{seed}"
    out.mkdir(parents=True, exist_ok=True)
    # R_0 is the same untrained model on the same tasks for every arm: copy it from a finished run (the
    # trainer reuses it only when the tasks and evaluation settings match, and rescores otherwise)
    shared = sorted(p for p in (runs / bench).glob("*/base/record.json") if p.parent.parent != out)
    if shared and not (out / "base" / "record.json").is_file():
        (out / "base").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared[0], out / "base" / "record.json")
    cmd = [sys.executable, "-m", "slice_trl.run", str(recipe), "--data_dir", str(SHARED / BENCHMARKS[bench]["data"]),
           *ARMS[arm], *extra, "--seed", str(seed), "--init.seed", str(seed), "--output_dir", str(out)]
    ok, wall = run_entry_point(cmd, out, f"{bench} {arm} seed {seed}", env={"HF_HUB_OFFLINE": "1"})
    if ok:
        records = sorted((out / "stages").glob("*/record.json"))
        evaluated = [len(json.loads(p.read_text())["scores"]) for p in records]
        off_label = [json.loads(p.read_text()).get("off_label") for p in records]
        summary = {**summarise_run(out), "label": arm, "bench_settings": want, "wall_s": wall,
                   "tasks_evaluated": evaluated, "off_label": off_label,
                   "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
                   "code_commit": code_commit()}  # what made the numbers (not part of "the same run")
        write_json_atomic(summary_file, summary)
    return {"ok": ok, "reused": False}


def stage_table(runs: list[dict]) -> str:
    """Seconds per stage, run by run: init, train, eval, and the task evaluations of that stage."""
    lines = ["| arm | stage | init s | train s | eval s | tasks scored | eval s per task |",
             "|---|---|---|---|---|---|---|"]
    for r in runs:
        for i, (t, n) in enumerate(zip(r["timings"], r.get("tasks_evaluated") or [None] * len(r["timings"]))):
            per = f"{t['eval'] / n:.1f}" if n else "–"
            lines.append(f"| {r['label']} | {i + 1} | {t['init']:.0f} | {t['train']:.0f} | {t['eval']:.0f} | "
                         f"{n if n else '–'} | {per} |")
    totals = ["", "| arm | wall min | init min | train min | eval min | task evaluations (+ base row) |",
              "|---|---|---|---|---|---|"]
    for r in runs:
        s = {k: sum(t[k] for t in r["timings"]) / 60 for k in ("init", "train", "eval")}
        base = (r.get("base_timings") or {}).get("eval")
        totals.append(f"| {r['label']} | {(r.get('wall_s') or 0) / 60:.1f} | {s['init']:.1f} | {s['train']:.1f} | "
                      f"{s['eval']:.1f} | {sum(r.get('tasks_evaluated') or [])} (+ {len(r['task_names'])} in "
                      f"{(base or 0) / 60:.1f} min) |")
    return "\n".join(lines + totals)


def report(bench: str, results: Path) -> str:
    runs = [json.loads(p.read_text()) for p in sorted((results / bench / "runs").glob("*.json"))]
    if not runs:
        return f"{bench}: no finished run yet"
    title = f"{bench}: {len(runs[0]['task_names'])} tasks, smoke scale (SmolLM2-135M, CPU)"
    out = compare_runs(runs, results / bench, [], title, {})
    off = [f"{r['label']}: " + ", ".join(f"{k} {v}" for k, v in (r["off_label"][-1] or {}).items())
           for r in runs if r.get("off_label") and r["off_label"][-1]]
    extra = ("\nPredictions outside labels.json after the last stage (they score 0), by task:\n\n"
             + "\n".join(f"- {line}" for line in off) + "\n") if off else ""
    text = (out["text"] + extra + "\nSeconds per stage (one thread; the machine shared with other work):\n\n"
            + stage_table(runs) + "\n")
    (results / bench / "compare.md").write_text(f"# {title}\n\n{text}")
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--benchmarks", nargs="+", default=list(BENCHMARKS), choices=list(BENCHMARKS))
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--first-tasks", type=int, default=None, help="only the first N tasks of the sequence (smoke)")
    p.add_argument("--max-steps", type=int, default=None, help="optimiser steps per task (default: the recipe's)")
    p.add_argument("--max-eval", type=int, default=None, help="test examples scored per task (default: the recipe's)")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--results-dir", default=str(RESULTS))
    p.add_argument("--report-only", action="store_true", help="rewrite the tables from the summaries; run nothing")
    args = p.parse_args(argv)
    runs, results = Path(args.runs_dir), Path(args.results_dir)
    if not args.report_only:
        extra = ["--max_steps", str(args.max_steps)] if args.max_steps else []
        t0, failed = time.perf_counter(), []
        for bench in args.benchmarks:
            recipe = recipe_for(bench, args.first_tasks, args.max_eval, runs)
            for seed in args.seeds:
                for arm in args.arms:
                    done = launch(bench, arm, seed, recipe, extra, runs, results)
                    failed += [] if done["ok"] else [(bench, arm, seed)]
                    if done["ok"] and not done["reused"]:  # tables after every run: partial results survive
                        report(bench, results)
        print(f"all runs in {(time.perf_counter() - t0) / 60:.1f} min; failed: {failed or 'none'}")
    for bench in args.benchmarks:
        print(report(bench, results))
    return 0 if args.report_only or not failed else 1


if __name__ == "__main__":
    raise SystemExit(main())
