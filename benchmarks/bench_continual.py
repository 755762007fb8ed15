"""Evidence benchmark: SLICE against LoRA-GA, LoRAM, vanilla LoRA and the continual strategies,
measured side by side with SmolLM2-135M-Instruct on CPU.

Every run is the real entry point, ``python -m slice_trl.run RECIPE --seed S --init.seed S
--init.method M ...``, on one of two sequences (recipes in benchmarks/recipes/):

- ``builtin``: the built-in conflicting suite of the quickstart (first -> last -> second);
- ``opp2``: NI-Seq-Opposite-2 on the real Super-NI task files (task088 -> task1510 -> task181 ->
  task243 -> task363). NI-Seq-Opposite-1 is not run: its task611 (MuTual) cannot be had offline.

Same model, data, seeds and hyper-parameters for every method; variance-matched rescaling for all
but vanilla (the recipes' ``init.rescale: true``; vanilla ignores it). Runs are independent
processes, ``--workers`` at a time with one thread each; a finished run (complete results.json)
is reused, so an interrupted benchmark resumes. Writes, under benchmarks/results/:

- ``continual_<seq>.json``: every run (R, AP, FP, forgetting, init/train time per stage, train
  time per optimiser step, size of the strategy state after the last task) and the summary;
- ``continual_<seq>.md``: the table printed at the end (mean and sample std over seeds);
- ``continual_<seq>_R_<method>.png``: R averaged over seeds, one per method;
- ``continual_<seq>_fp_vs_ap.png``: the stability-plasticity plot (FP against AP, FP = AP line);
- with ``--reference DIR``: ``continual_<seq>_rerun_check.md``, each run against the same run in DIR.

    python benchmarks/bench_continual.py                       # issue 7's six methods, both sequences
    python benchmarks/bench_continual.py --methods strategies  # KeepLoRA, EBLoRA, SLAO, O-LoRA, InfLoRA
    python benchmarks/bench_continual.py --sequences builtin --methods vanilla slice_c1.0 --seeds 0 1
    python benchmarks/bench_continual.py --sequences builtin --methods vanilla --runs-dir runs/rerun \\
        --results-dir runs/rerun/results --reference benchmarks/results   # reproducibility check
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DATA = ROOT.parent / "shared" / "data" / "superni"

SEQUENCES = {
    "builtin": {"recipe": "benchmarks/recipes/builtin_cpu.yaml", "args": []},
    "opp2": {"recipe": "benchmarks/recipes/ni_seq_opp2_cpu.yaml", "args": ["--data_dir", str(DATA)]},
}

# method name -> recipe overrides. The recipes' initialiser is SLICE, so every strategy that
# defines its own initialisation runs with init.method vanilla; O-LoRA also composes with SLICE.
METHODS = {
    "vanilla": ["--init.method", "vanilla"],
    "lora_ga": ["--init.method", "lora_ga"],
    "loram": ["--init.method", "loram"],
    "slice_c0.5": ["--init.method", "slice", "--init.c", "0.5"],
    "slice_c0.75": ["--init.method", "slice", "--init.c", "0.75"],
    "slice_c1.0": ["--init.method", "slice", "--init.c", "1.0"],
    "slice_c1.0_per_module": ["--init.method", "slice", "--init.c", "1.0", "--init.projection", "per_module"],
    "keeplora": ["--init.method", "vanilla", "--strategy.name", "keeplora"],
    "eblora": ["--init.method", "vanilla", "--strategy.name", "eblora"],
    "slao": ["--init.method", "vanilla", "--strategy.name", "slao"],
    "olora": ["--init.method", "vanilla", "--strategy.name", "olora"],
    "inflora": ["--init.method", "vanilla", "--strategy.name", "inflora"],
    "slice_c1.0+olora": ["--init.method", "slice", "--init.c", "1.0", "--strategy.name", "olora"],
}
GROUPS = {
    "initialisers": ["vanilla", "lora_ga", "loram", "slice_c0.5", "slice_c0.75", "slice_c1.0"],
    "strategies": ["keeplora", "eblora", "slao", "olora", "inflora"],
}


def n_stages(seq: str) -> int:
    """Tasks in the sequence's recipe (one stage each)."""
    import yaml

    return len(yaml.safe_load((ROOT / SEQUENCES[seq]["recipe"]).read_text())["tasks"])


def run_dir(runs: Path, seq: str, method: str, seed: int) -> Path:
    return runs / seq / f"{method}_seed{seed}"


def is_complete(out: Path) -> bool:
    path = out / "results.json"
    if not path.is_file():
        return False
    R = json.loads(path.read_text())["R"]
    return all(v is not None for row_i, row in enumerate(R) for v in row[: row_i + 1])


def launch(seq: str, method: str, seed: int, runs: Path) -> dict:
    """One run of the entry point in its own process (one thread); returns its wall time."""
    out = run_dir(runs, seq, method, seed)
    if is_complete(out):
        return {"seq": seq, "method": method, "seed": seed, "wall_s": None, "reused": True, "ok": True}
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "slice_trl.run", SEQUENCES[seq]["recipe"], *SEQUENCES[seq]["args"],
           *METHODS[method], "--seed", str(seed), "--init.seed", str(seed), "--output_dir", str(out)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    with open(out / "log.txt", "w") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - t0
    status = "ok" if proc.returncode == 0 else f"FAILED (exit {proc.returncode}, see {out / 'log.txt'})"
    print(f"[{time.strftime('%H:%M:%S')}] {seq:8s} {method:18s} seed {seed}: {status} in {wall:.0f} s", flush=True)
    return {"seq": seq, "method": method, "seed": seed, "wall_s": wall, "reused": False, "ok": proc.returncode == 0}


def collect(out: Path) -> dict:
    """What one finished run left on disk: R and metrics, per-stage timings, strategy state size."""
    res = json.loads((out / "results.json").read_text())
    stages = sorted(p for p in (out / "stages").iterdir() if (p / "record.json").is_file())
    records = [json.loads((p / "record.json").read_text()) for p in stages]
    init_s = [r["timings"]["init"] for r in records]
    train_s = [r["timings"]["train"] for r in records]
    steps = [r["train_metrics"].get("train_steps_per_second") for r in records]
    state = stages[-1] / "strategy_state.safetensors"
    return {
        "R": res["R"], "AP": res["AP"], "FP": res["FP"], "forgetting": res["forgetting"],
        "init_s": init_s, "train_s": train_s, "eval_s": [r["timings"]["eval"] for r in records],
        "init_over_train": [i / t for i, t in zip(init_s, train_s)],
        # saving the stage, merging and the strategy's after-task work (KeepLoRA's probe, InfLoRA's
        # input covariance and subspace extension), over the stage's training time
        "after_over_train": [r["timings"]["save_merge"] / t for r, t in zip(records, train_s)],
        "s_per_step": [1.0 / s for s in steps if s],
        # time inside the strategy's per-optimiser-step hooks over the training time (same process,
        # same load: robust to other work on the machine, unlike s_per_step across runs)
        "step_hooks_over_train": sum(r["timings"].get("strategy_step_hooks", 0.0) for r in records) / sum(train_s),
        "state_bytes": state.stat().st_size if state.is_file() else 0,
        "surgery": [r["init"].get("surgery") for r in records],
    }


def mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def summarise(runs: dict[str, list[dict]]) -> dict[str, dict]:
    vanilla_step = None
    if "vanilla" in runs:
        vanilla_step = statistics.fmean(s for r in runs["vanilla"] for s in r["s_per_step"])
    summary = {}
    for method, rs in runs.items():
        row = {k: mean_sd([100 * r[k] for r in rs]) for k in ("AP", "FP", "forgetting")}
        row["n_seeds"] = len(rs)
        row["init_over_train"] = statistics.fmean(x for r in rs for x in r["init_over_train"])
        row["after_over_train"] = statistics.fmean(x for r in rs for x in r["after_over_train"])
        step = statistics.fmean(s for r in rs for s in r["s_per_step"])
        row["s_per_step"] = step
        row["step_vs_vanilla"] = step / vanilla_step if vanilla_step else None
        row["state_mb"] = statistics.fmean(r["state_bytes"] for r in rs) / 2**20
        row["step_hooks_over_train"] = statistics.fmean(r.get("step_hooks_over_train", 0.0) for r in rs)
        summary[method] = row
    return summary


def table(seq: str, summary: dict[str, dict]) -> str:
    lines = [f"| method ({seq}) | seeds | AP | FP | forgetting | init / train time | step hooks / train time "
             "| after task / train time | s per step (x vanilla) | state MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for method, row in summary.items():
        cells = [f"{row[k][0]:.1f} ± {row[k][1]:.1f}" for k in ("AP", "FP", "forgetting")]
        rel = f" ({row['step_vs_vanilla']:.2f}x)" if row["step_vs_vanilla"] else ""
        shares = [f"{100 * row[k]:.1f}%" for k in ("init_over_train", "step_hooks_over_train", "after_over_train")]
        lines.append(f"| {method} | {row['n_seeds']} | " + " | ".join(cells + shares)
                     + f" | {row['s_per_step']:.2f}{rel} | {row['state_mb']:.2f} |")
    return "\n".join(lines)


def plots(seq: str, runs: dict[str, list[dict]], summary: dict[str, dict], task_names: list[str],
          results: Path) -> None:
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from slice_trl.results import ResultsMatrix

    for method, rs in runs.items():
        mean = ResultsMatrix(task_names)
        for i in range(len(task_names)):
            mean.set_row(i, [statistics.fmean(r["R"][i][j] for r in rs) for j in range(i + 1)])
        mean.heatmap(results / f"continual_{seq}_R_{method}.png",
                     title=f"{seq}: {method} (mean R over {len(rs)} seeds)")
    fig = Figure(figsize=(6.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = "osD^vPX*h<>pd8H"
    colours = matplotlib.colormaps["tab20"].colors  # 20 distinct colours: one per method, never repeated
    for i, (method, row) in enumerate(summary.items()):
        (ap, ap_sd), (fp, fp_sd) = row["AP"], row["FP"]
        ax.errorbar(ap, fp, xerr=ap_sd, yerr=fp_sd, fmt=markers[i % len(markers)], ms=7, capsize=3,
                    color=colours[(2 * i) % 20 + (2 * i) // 20], label=method)
    lo = min(min(r["AP"][0], r["FP"][0]) for r in summary.values()) - 5
    hi = max(max(r["AP"][0], r["FP"][0]) for r in summary.values()) + 5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="FP = AP (no forgetting)")
    ax.set_xlabel("AP: mean score on each task right after training it (x100)")
    ax.set_ylabel("FP: mean final score over all tasks (x100)")
    ax.set_title(f"Stability vs plasticity: {seq} (mean ± sd over seeds)")
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(results / f"continual_{seq}_fp_vs_ap.png", dpi=120)


def report(seq: str, methods: list[str], seeds: list[int], runs_root: Path, wall: dict, results: Path) -> str:
    path = results / f"continual_{seq}.json"
    old = json.loads(path.read_text()) if path.is_file() else {"runs": {}}
    per_method = dict(old.get("runs", {}))  # keep methods of earlier invocations (e.g. the strategies)
    for method in methods:
        # a reused run keeps the wall time measured when it actually ran
        old_wall = {r["seed"]: r.get("wall_s") for r in per_method.get(method, [])}
        per_method[method] = [{"seed": s, **collect(run_dir(runs_root, seq, method, s)),
                               "wall_s": wall.get((method, s)) or old_wall.get(s)} for s in seeds]
    order = [m for m in METHODS if m in per_method]
    per_method = {m: per_method[m] for m in order}
    summary = summarise(per_method)
    task_names = json.loads((run_dir(runs_root, seq, methods[0], seeds[0]) / "run.json").read_text())["task_names"]
    results.mkdir(parents=True, exist_ok=True)
    payload = {"sequence": seq, "recipe": SEQUENCES[seq]["recipe"], "task_names": task_names, "seeds": seeds,
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
               "summary": summary, "runs": per_method}
    path.write_text(json.dumps(payload, indent=2))
    text = table(seq, summary)
    (results / f"continual_{seq}.md").write_text(
        f"# {seq}: {' -> '.join(task_names)}\n\nRecipe `{SEQUENCES[seq]['recipe']}`, seeds {seeds}; "
        f"scores x100, mean ± sample std over seeds. Init / train time: initialisation time (gradients, "
        f"surgery, SVD, strategy set-up) over the stage's training time, mean over stages. Step hooks / "
        f"train time: time in a strategy's per-optimiser-step hooks over the training time (same runs). "
        f"After task / train time: saving the stage, merging and the strategy's after-task work (e.g. "
        f"KeepLoRA's gradient probe, InfLoRA's input covariance) over the training time. s per step: "
        f"training seconds per optimiser step, one thread, runs sharing the machine (noisy "
        f"across runs). State MB: the strategy state stored with the last stage.\n\n{text}\n")
    plots(seq, per_method, summary, task_names, results)
    return text


def compare(seq: str, results: Path, reference: Path) -> str:
    """How far this invocation's runs are from the same (method, seed) runs in ``reference``: the
    largest |R difference| and the AP/FP/forgetting differences (x100), against the spread over seeds
    that the reference table states. Written to ``continual_<seq>_rerun_check.md``."""
    new = json.loads((results / f"continual_{seq}.json").read_text())
    ref = json.loads((reference / f"continual_{seq}.json").read_text())
    lines = [f"# {seq}: rerun against `{reference}`\n",
             "| method | seed | max abs R difference (x100) | AP diff | FP diff | forgetting diff "
             "| reference sd of FP over seeds |", "|---|---|---|---|---|---|---|"]
    for method, runs in new["runs"].items():
        ref_runs = {r["seed"]: r for r in ref["runs"].get(method, [])}
        for run in runs:
            old = ref_runs.get(run["seed"])
            if old is None:
                continue
            dR = max(abs(a - b) for ra, rb in zip(run["R"], old["R"]) for a, b in zip(ra, rb) if a is not None)
            diffs = [f"{100 * (run[k] - old[k]):+.2f}" for k in ("AP", "FP", "forgetting")]
            lines.append(f"| {method} | {run['seed']} | {100 * dR:.2f} | " + " | ".join(diffs)
                         + f" | {ref['summary'][method]['FP'][1]:.1f} |")
    text = "\n".join(lines) + "\n"
    (results / f"continual_{seq}_rerun_check.md").write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", nargs="+", default=list(SEQUENCES), choices=list(SEQUENCES))
    p.add_argument("--methods", nargs="+", default=["initialisers"],
                   help=f"method names ({', '.join(METHODS)}) or groups ({', '.join(GROUPS)}).")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--workers", type=int, default=2, help="runs at a time (one thread each).")
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--results-dir", default=str(RESULTS), help="where the tables and plots go (a rerun "
                   "meant to check reproducibility can write elsewhere and be compared).")
    p.add_argument("--reference", default=None, help="a results directory from an earlier invocation (e.g. "
                   "benchmarks/results): compare every (method, seed) run to it and write "
                   "continual_<seq>_rerun_check.md; use with a fresh --runs-dir and --results-dir.")
    args = p.parse_args(argv)
    methods = [m for name in args.methods for m in GROUPS.get(name, [name])]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {list(METHODS)} or groups {list(GROUPS)}")
    runs_root = Path(args.runs_dir)
    # longest sequence first: the runs still going when the queue empties are short ones, so no
    # worker idles long at the end
    order = sorted(args.sequences, key=n_stages, reverse=True)
    jobs = [(seq, m, s) for seq in order for s in args.seeds for m in methods]
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=args.workers) as pool:
        done = list(pool.map(lambda job: launch(*job, runs_root), jobs))
    total = time.perf_counter() - t0
    print(f"\n{len(jobs)} runs ({sum(d['reused'] for d in done)} reused) in {total / 60:.1f} min "
          f"with {args.workers} workers\n")
    failed = {(d["seq"], d["method"]) for d in done if not d["ok"]}
    for seq in args.sequences:
        wall = {(d["method"], d["seed"]): d["wall_s"] for d in done if d["seq"] == seq}
        ok = [m for m in methods if (seq, m) not in failed]  # a method is reported with all its seeds or not at all
        if ok:
            print(report(seq, ok, args.seeds, runs_root, wall, Path(args.results_dir)), "\n")
            if args.reference:
                print(compare(seq, Path(args.results_dir), Path(args.reference)))
    if failed:
        print(f"FAILED (not in the tables): {sorted(failed)}; see each run's log.txt")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
