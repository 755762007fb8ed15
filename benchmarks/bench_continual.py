"""Evidence benchmark: SLICE against LoRA-GA, LoRAM and vanilla LoRA (and the continual
strategies), measured side by side with SmolLM2-135M-Instruct on CPU.

Every run is the real entry point, ``python -m slice_trl.run RECIPE --seed S --init.seed S
--init.method M ...``, in its own process with one thread. Sequences (recipes in benchmarks/recipes/):

- ``opp1`` (default, issue 17): NI-Seq-Opposite-1 WITHOUT task611 (MuTual is not available
  offline), i.e. task088 -> task090 -> task1510 -> task363, at the paper's operating point scaled
  down: rsLoRA s = alpha / sqrt(r) = 0.25 (r = 16, alpha = 1), total movement s * lr * steps matched
  to the paper's (README, "Evidence"), max_length 256 (nothing shortened), completion-only loss,
  a 32 + 32 example gradient probe drawn fresh per stage, 32 held-out examples per task, the base
  row R_0 scored once and shared by every run (greedy decoding of the same model: identical).
- ``builtin`` and ``opp2``: the earlier settings (r = 8, alpha = 8: s = 2.83), kept to reproduce
  the committed earlier results.

Resumable across sessions: each finished run's summary (R, base row, gate log, timings, settings)
is written to ``<results-dir>/<seq>/runs/<arm>_seed<S>.json`` (committed) and every scored example
(the predictions, runs from issue 30 on) to ``<arm>_seed<S>.predictions.json.gz`` beside it; a run whose summary is
there with the same settings (parsed recipe, arm, seed) is not run again, even when its run folder
is gone. A run folder that finished without a summary is summarised, not rerun; an unfinished one
resumes from its last finished stage. Then `slice_trl.compare` writes, under the results dir:

- ``continual_<seq>.json`` / ``continual_<seq>.md``: AP / FP / forgetting (and learned / retained
  over the base row) per arm, mean ± sample std over seeds, the paired differences FP(SLICE) -
  FP(LoRA-GA) by seed, the gate log, and the per-stage times;
- ``continual_<seq>_R_<arm>.png`` (+ ``_pct_base.png``: % of the base model) and
  ``continual_<seq>_fp_vs_ap.png`` (with the paper's Opp1 points for opp1);
- with ``--reference DIR``: ``continual_<seq>_rerun_check.md``, each run against the same run in DIR.

    python benchmarks/bench_continual.py                                   # the issue-17 benchmark (opp1)
    python benchmarks/bench_continual.py --methods slice_c1.0 lora_ga --seeds 0   # go/no-go runs
    python benchmarks/bench_continual.py --methods lora_ga --seeds 0 --runs-dir runs/rerun \\
        --results-dir runs/rerun/results --reference benchmarks/results   # reproducibility check
    python benchmarks/bench_continual.py --sequences builtin opp2 --methods initialisers --seeds 0 1
    python benchmarks/bench_continual.py --report-only        # tables and plots from the committed summaries
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # slice_trl from this checkout, also when run as a script

from slice_trl.compare import PAPER_OPP1, compare as compare_runs, summarise_run  # noqa: E402
from slice_trl.utils.jsonio import read_summary, write_summary  # noqa: E402
from slice_trl.utils.jsonio import write_json_atomic  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
# ../shared/data next to the checkout (main), or next to the worktrees' folder (/work/wt/<name>)
DATA = next((p for p in (ROOT.parent / "shared" / "data" / "superni", ROOT.parent.parent / "shared" / "data" / "superni")
             if p.is_dir()), ROOT.parent / "shared" / "data" / "superni")

SEQUENCES = {
    "opp1": {"recipe": "benchmarks/recipes/ni_seq_opp1_paper_op.yaml", "data": True,
             "pairs": [("slice_c1.0", "lora_ga"), ("slice_c1.0_each_task", "lora_ga"),
                       ("slice_c1.0_per_module", "lora_ga"), ("slice_c0.5", "lora_ga"),
                       # against the plasticity-matched control: AP (is it matched?) and forgetting, by seed
                       ("slice_c1.0", "vanilla_lr6e-3", "AP"), ("slice_c1.0", "vanilla_lr6e-3", "forgetting"),
                       ("lora_ga", "vanilla_lr6e-3", "forgetting"), ("slice_c1.0", "vanilla_lr6e-3"),
                       # LoRAM against LoRA-GA (the README compares them): plasticity and forgetting
                       ("loram", "lora_ga", "AP"), ("loram", "lora_ga", "forgetting"), ("loram", "lora_ga")],
             "paper": PAPER_OPP1},
    "builtin": {"recipe": "benchmarks/recipes/builtin_cpu.yaml", "data": False, "pairs": [], "paper": {}},
    "opp2": {"recipe": "benchmarks/recipes/ni_seq_opp2_cpu.yaml", "data": True, "pairs": [], "paper": {}},
}

# arm name -> recipe overrides. The recipes' initialiser is SLICE (global, c = 1), so every strategy
# that defines its own initialisation runs with init.method vanilla; O-LoRA also composes with SLICE.
METHODS = {
    "vanilla": ["--init.method", "vanilla"],
    # the plasticity-matched control (opp1): vanilla moves W 11-21x less per step than the
    # variance-matched inits at the same lr (docs/method.md), so 10x the recipe's 6e-4
    "vanilla_lr6e-3": ["--init.method", "vanilla", "--learning_rate", "0.006"],
    "lora_ga": ["--init.method", "lora_ga"],
    "loram": ["--init.method", "loram"],
    "slice_c0.5": ["--init.method", "slice", "--init.c", "0.5"],
    "slice_c0.75": ["--init.method", "slice", "--init.c", "0.75"],
    "slice_c1.0": ["--init.method", "slice", "--init.c", "1.0"],
    "slice_c1.0_per_module": ["--init.method", "slice", "--init.c", "1.0", "--init.projection", "per_module"],
    # issue 30: the paper's (and the project's default) probe weighting: G_prev is the mean over
    # earlier tasks of each task's own mean gradient, prev_steps batches per earlier task (32 examples
    # each), instead of the recipe's pooled mix
    "slice_c1.0_each_task": ["--init.method", "slice", "--init.c", "1.0", "--init.prev_batching", "each_task"],
    "keeplora": ["--init.method", "vanilla", "--strategy.name", "keeplora"],
    "eblora": ["--init.method", "vanilla", "--strategy.name", "eblora"],
    "slao": ["--init.method", "vanilla", "--strategy.name", "slao"],
    "olora": ["--init.method", "vanilla", "--strategy.name", "olora"],
    "inflora": ["--init.method", "vanilla", "--strategy.name", "inflora"],
    "slice_c1.0+olora": ["--init.method", "slice", "--init.c", "1.0", "--strategy.name", "olora"],
}
GROUPS = {
    # issue 17: go/no-go pair first, then the rest of the arms (run seed by seed)
    "evidence": ["slice_c1.0", "lora_ga", "vanilla", "vanilla_lr6e-3", "loram", "slice_c1.0_per_module",
                 "slice_c0.5", "slice_c1.0_each_task"],
    "initialisers": ["vanilla", "lora_ga", "loram", "slice_c0.5", "slice_c0.75", "slice_c1.0"],
    "strategies": ["keeplora", "eblora", "slao", "olora", "inflora"],
}


def run_dir(runs: Path, seq: str, method: str, seed: int) -> Path:
    return runs / seq / f"{method}_seed{seed}"


def summary_path(results: Path, seq: str, method: str, seed: int) -> Path:
    return results / seq / "runs" / f"{method}_seed{seed}.json"


def settings(seq: str, method: str, seed: int) -> dict:
    """What makes a run the same run: the recipe's content (parsed, so comments may change), the
    arm's overrides and the seed (not the paths, which differ between checkouts)."""
    import yaml

    content = json.dumps(yaml.safe_load((ROOT / SEQUENCES[seq]["recipe"]).read_text()), sort_keys=True)
    return {"recipe": SEQUENCES[seq]["recipe"], "recipe_sha256": hashlib.sha256(content.encode()).hexdigest(),
            "overrides": METHODS[method], "seed": seed}


def is_complete(out: Path) -> bool:
    path = out / "results.json"
    if not path.is_file():
        return False
    R = json.loads(path.read_text())["R"]
    return all(v is not None for row_i, row in enumerate(R) for v in row[: row_i + 1])


def finished_summary(results: Path, seq: str, method: str, seed: int) -> dict | None:
    path = summary_path(results, seq, method, seed)
    if not path.is_file():
        return None
    summary = read_summary(path)  # with its predictions (the .predictions.json.gz beside it), if any
    return summary if summary.get("bench_settings") == settings(seq, method, seed) else None


def _share_base_row(runs: Path, seq: str, out: Path) -> None:
    """Copy R_0 from a finished run of the sequence (the trainer reuses it only if the tasks and
    evaluation settings match, and rescores otherwise)."""
    if (out / "base" / "record.json").is_file():
        return
    for other in sorted((runs / seq).glob("*/base/record.json")):
        (out / "base").mkdir(parents=True, exist_ok=True)
        shutil.copyfile(other, out / "base" / "record.json")
        return


def run_entry_point(cmd: list[str], out: Path, label: str, env: dict | None = None) -> tuple[bool, float]:
    """Run one benchmark run (``cmd``: the entry point and its overrides) in its own process with one
    thread and this checkout's package, appending its output to ``out/log.txt``; prints one line.
    Returns (finished with exit 0, wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           **(env or {}),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    t0 = time.perf_counter()
    with open(out / "log.txt", "a") as log:
        proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    wall, ok = time.perf_counter() - t0, proc.returncode == 0
    status = "ok" if ok else f"FAILED (exit {proc.returncode}, see {out / 'log.txt'})"
    print(f"[{time.strftime('%H:%M:%S')}] {label}: {status} in {wall:.0f} s", flush=True)
    return ok, wall


def launch(seq: str, method: str, seed: int, runs: Path, results: Path) -> dict:
    """One run of the entry point in its own process (one thread), unless its summary is already
    in ``results``; writes the summary. Returns {"ok", "reused", "wall_s"}."""
    if finished_summary(results, seq, method, seed) is not None:
        return {"seq": seq, "method": method, "seed": seed, "wall_s": None, "reused": True, "ok": True}
    out = run_dir(runs, seq, method, seed)
    wall, ok = None, True
    if not is_complete(out):
        out.mkdir(parents=True, exist_ok=True)
        _share_base_row(runs, seq, out)
        data = ["--data_dir", str(DATA)] if SEQUENCES[seq]["data"] else []
        cmd = [sys.executable, "-m", "slice_trl.run", SEQUENCES[seq]["recipe"], *data, *METHODS[method],
               "--seed", str(seed), "--init.seed", str(seed), "--output_dir", str(out)]
        ok, wall = run_entry_point(cmd, out, f"{seq:8s} {method:22s} seed {seed}")
    if ok:
        summary = {**summarise_run(out), "label": method, "bench_settings": settings(seq, method, seed),
                   "wall_s": wall, "machine": {"platform": platform.platform(), "cpus": os.cpu_count()}}
        write_summary(summary_path(results, seq, method, seed), summary)  # predictions: a .predictions.json.gz beside it
    return {"seq": seq, "method": method, "seed": seed, "wall_s": wall, "reused": False, "ok": ok}


def timing_table(runs: list[dict]) -> str:
    """Seconds per stage (mean over the arm's runs and stages): probe + init, training, evaluation."""
    arms: dict[str, list[dict]] = {}
    for r in runs:
        arms.setdefault(r["label"], []).append(r)
    lines = ["| arm | init (probe, surgery, SVD) s/stage | train s/stage | eval s/stage | wall min/run |",
             "|---|---|---|---|---|"]
    for label, rs in arms.items():
        per = {k: statistics.fmean(t[k] for r in rs for t in r["timings"]) for k in ("init", "train", "eval")}
        walls = [r["wall_s"] / 60 for r in rs if r.get("wall_s")]
        wall = f"{statistics.fmean(walls):.1f}" if walls else "–"
        lines.append(f"| {label} | {per['init']:.0f} | {per['train']:.0f} | {per['eval']:.0f} | {wall} |")
    return "\n".join(lines)


def report(seq: str, methods: list[str], seeds: list[int], results: Path) -> str:
    """Compare every finished run of ``methods`` x ``seeds`` (summaries in ``results``)."""
    runs = [s for m in methods for seed in seeds if (s := finished_summary(results, seq, m, seed)) is not None]
    if not runs:
        return f"{seq}: no finished run yet"
    pairs = [pair for pair in SEQUENCES[seq]["pairs"] if set(pair[:2]) <= {r["label"] for r in runs}]
    names = runs[0]["task_names"]
    title = f"{seq}: {' -> '.join(n.split('_')[0] for n in names)}"  # task ids: full names do not fit a plot
    out = compare_runs(runs, results, pairs, title, SEQUENCES[seq]["paper"], prefix=f"continual_{seq}_")
    # the layout of earlier invocations (continual_<seq>.json/.md), which --reference reads
    payload = {"sequence": seq, "recipe": SEQUENCES[seq]["recipe"], "task_names": names, "seeds": seeds,
               **{k: out[k] for k in ("summary", "pairs", "runs", "constant_answers")}}
    write_json_atomic(results / f"continual_{seq}.json", payload)
    for name in ("compare.json", "compare.md"):
        (results / f"continual_{seq}_{name}").unlink(missing_ok=True)
    text = out["text"] + "\nSeconds per stage (one thread, the machine shared with other work):\n\n" + timing_table(runs)
    (results / f"continual_{seq}.md").write_text(f"# {title}\n\nRecipe `{SEQUENCES[seq]['recipe']}`, seeds "
                                                 f"{seeds}.\n\n{text}\n")
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
            ref_row = ref["summary"][method]
            n_ref = len(ref_row["seeds"]) if "seeds" in ref_row else ref_row.get("n_seeds", 2)
            spread = f"{ref_row['FP'][1]:.1f}" if n_ref > 1 else "– (1 seed)"  # a sample sd needs two
            lines.append(f"| {method} | {run['seed']} | {100 * dR:.2f} | " + " | ".join(diffs) + f" | {spread} |")
    text = "\n".join(lines) + "\n"
    (results / f"continual_{seq}_rerun_check.md").write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sequences", nargs="+", default=["opp1"], choices=list(SEQUENCES))
    p.add_argument("--methods", nargs="+", default=["evidence"],
                   help=f"arm names ({', '.join(METHODS)}) or groups ({', '.join(GROUPS)}).")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--runs-dir", default=str(ROOT / "runs" / "bench"))
    p.add_argument("--results-dir", default=str(RESULTS), help="where the run summaries, tables and plots go (a "
                   "rerun meant to check reproducibility can write elsewhere and be compared).")
    p.add_argument("--reference", default=None, help="a results directory from an earlier invocation (e.g. "
                   "benchmarks/results): compare every (arm, seed) run to it and write "
                   "continual_<seq>_rerun_check.md; use with a fresh --runs-dir and --results-dir.")
    p.add_argument("--report-only", action="store_true", help="rewrite the tables and plots from the run "
                   "summaries already in --results-dir; start no run.")
    args = p.parse_args(argv)
    methods = [m for name in args.methods for m in GROUPS.get(name, [name])]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"unknown method(s) {unknown}; known: {list(METHODS)} or groups {list(GROUPS)}")
    runs_root, results = Path(args.runs_dir), Path(args.results_dir)
    if args.report_only:
        for seq in args.sequences:
            print(report(seq, methods, args.seeds, results), "\n")
        return 0
    # seed by seed, so that complete seeds (all arms) accumulate first; one run at a time, one thread
    jobs = [(seq, m, s) for seq in args.sequences for s in args.seeds for m in methods]
    t0 = time.perf_counter()
    done = []
    for job in jobs:
        done.append(launch(*job, runs_root, results))
        if done[-1]["ok"] and not done[-1]["reused"]:  # tables after every finished run: partial results survive
            try:
                report(job[0], methods, args.seeds, results)
            except Exception as err:  # noqa: BLE001 - a reporting bug must not stop the remaining runs
                print(f"report failed ({type(err).__name__}: {err}); the runs go on", flush=True)
    print(f"\n{len(jobs)} runs ({sum(d['reused'] for d in done)} reused) in {(time.perf_counter() - t0) / 60:.1f} min\n")
    for seq in args.sequences:
        print(report(seq, methods, args.seeds, results), "\n")
        if args.reference:
            print(compare(seq, results, Path(args.reference)))
    failed = sorted({(d["seq"], d["method"], d["seed"]) for d in done if not d["ok"]})
    if failed:
        print(f"FAILED (not in the tables): {failed}; see each run's log.txt")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
