"""Compare continual runs as the paper presents them:

    python -m slice_trl.compare RUN [RUN ...] [--out DIR] [--pair A:B ...] [--paper-opp1]

A RUN is a run folder (``output_dir`` of `slice_trl.run`: its facts, results and stage records
and, with ``evaluation.score_base``, the base model's record; `slice_trl.utils.run_folder`), a run summary JSON
written by `summarise_run` (what the benchmark commits), a Hub repo the run was published to
(``user/repo`` or ``user/repo@revision``; read when no local path has that name; only its JSON
files are downloaded), or ``LABEL=RUN`` to name its arm. Runs
with the same label are seeds of one arm; the default label is read from the run's facts (initialiser,
c and projection for SLICE, strategy).

Writes into ``--out`` (default ``compare/``):

- ``compare.md``: per arm AP / FP / forgetting (and learned / retained with a base row), mean ±
  sample std over seeds; paired differences by seed (``--pair A:B``, e.g. FP(SLICE) - FP(LoRA-GA):
  same magnitude, so the difference isolates the surgery; ``--pair A:B:forgetting`` for another
  metric), each with its 95% t-interval and the minimum detectable difference at 80% power
  (`slice_trl.utils.stats`: exact noncentral-t power); per arm and task, how constant the final
  stage's answers are (from the predictions the summaries carry; n/a for summaries written
  before predictions were kept); the per-stage gate log of every SLICE run (global cosine, gamma,
  fired, fraction of modules with a negative cosine);
- ``compare.json``: the same numbers;
- ``R_<arm>.png`` (mean R over seeds, base row on top) and ``R_<arm>_pct_base.png`` (% of the
  base model's score, as the paper's heatmaps), ``fp_vs_ap.png`` (with ``--paper-opp1`` or
  ``--reference-point`` the paper's points drawn beside ours: a different model and scale, for
  shape only).
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
from collections import Counter
from pathlib import Path

from slice_trl.evaluation.cl_metrics import FIELD_METRICS
from slice_trl.utils.jsonio import read_json, read_summary, write_json_atomic
from slice_trl.utils.run_folder import RunFolder
from slice_trl.evaluation.results import ResultsMatrix
from slice_trl.utils.registry import initializers
from slice_trl.utils.stats import paired_summary

METRICS = ("AP", "FP", "forgetting", "learned", "retained")
HUB_REPO = re.compile(r"^[\w.-]+/[\w.-]+(@[\w./-]+)?$")  # user/repo[@revision]
# docs/method.md, "Headline results": NI-Seq-Opp1 (five tasks), Llama-3.2-3B, r = 64; (AP, FP) x100.
# LoRA-GA (FP 17.62) and LoRAM (FP 24.25) have no AP there, so they cannot be drawn.
PAPER_OPP1 = {"paper Opp1 (5 tasks, 3B) vanilla": (27.27, 12.53), "paper Opp1 (5 tasks, 3B) SLICE c=1": (25.54, 29.50)}


def default_label(info: dict) -> str:
    """Arm name from a run's facts (`RunFolder.read_run`): the initialiser (with its gate's c and
    projection when it has one, i.e. SLICE), + strategy."""
    init = info.get("init", {})
    label = init.get("method", "run")
    if initializers.trait(label, "has_gate", False):
        label += f"_c{init.get('c')}_{init.get('projection', 'global')}"
    if info.get("strategy"):
        label += f"+{info['strategy']['name']}"
    return label


def summarise_run(folder: str | Path, records: list[Path] | None = None) -> dict:
    """What one run folder holds, as a flat summary: R (and base row), metrics, the per-stage
    gate log and timings, and the run's settings (its facts). ``complete`` is False while stages
    are missing. ``records``: the stage records' paths in stage order (default: the local layout,
    `RunFolder.stage_records`; a published run names its stage folders differently)."""
    run = RunFolder(folder)
    info = read_json(run.run_file)
    results = ResultsMatrix.from_dict(read_json(run.results_file))
    base = read_json(run.base_record) if run.base_record.is_file() else None
    if results.base is None and base is not None:
        results.set_base(base["scores"])
    if records is None:
        records = run.stage_records()
    records = [read_json(p) for p in records]
    return {
        "label": default_label(info), "seed": info.get("seed"), "task_names": results.task_names,
        "complete": results.completed == results.num_tasks, **results.to_dict(), **results.summary(),
        "gate": [r["init"].get("surgery") for r in records],
        "timings": [r["timings"] for r in records],
        "base_timings": base["timings"] if base is not None else None,
        "n_scored": [r.get("n_scored") for r in records],
        "train_loss": [r.get("train_metrics", {}).get("train_loss") for r in records],
        # every scored example per stage and task (records written before predictions were kept: None)
        "predictions": [r.get("predictions") for r in records],
        "base_predictions": base.get("predictions") if base is not None else None,
        "settings": {k: info.get(k) for k in ("base_model", "lora", "init", "strategy", "recipe", "tasks")},
    }


def _hub_run(spec: str) -> dict:
    from slice_trl.hub import download_run_records

    repo_id, _, revision = spec.partition("@")
    try:
        folder, records = download_run_records(repo_id, revision or None)
    except Exception as err:  # not found, offline, gated: one line naming both readings of RUN
        raise ValueError(f"Run {spec!r} is neither a local path nor a readable Hub run repo ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else ''}). Give a run folder, a summary JSON, "
                         "or user/repo[@revision] of a published run.") from None
    return summarise_run(folder, records)


def load_run(spec: str) -> dict:
    """``[LABEL=]RUN``: a run folder, a summary JSON or a Hub repo -> summary (see `summarise_run`)."""
    label, _, path = spec.rpartition("=") if "=" in spec else ("", "", spec)
    text, path = path, Path(path)
    if not path.exists() and HUB_REPO.match(text):
        run = _hub_run(text)
    elif path.is_dir():
        if not RunFolder(path).results_file.is_file():
            raise ValueError(f"{path} has no {RunFolder.RESULTS}: not a finished (or started) run folder. Give the "
                             "output_dir of a run.")
        run = summarise_run(path)
    elif path.is_file():
        run = read_summary(path)
        if "R" not in run or "task_names" not in run:
            raise ValueError(f"{path} is not a run summary (no 'R'/'task_names'); give a run folder or a summary "
                             "written by slice_trl.compare.summarise_run.")
    else:
        raise ValueError(f"Run {str(path)!r} does not exist: give a run folder (output_dir) or a summary JSON.")
    if label:
        run["label"] = label
    return run


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def group(runs: list[dict]) -> dict[str, list[dict]]:
    """label -> runs (in the order given); every run must cover the same tasks, one run per seed."""
    names = runs[0]["task_names"]
    arms: dict[str, list[dict]] = {}
    for run in runs:
        if run["task_names"] != names:
            raise ValueError(f"Run {run['label']!r} (seed {run['seed']}) covers tasks {run['task_names']}, not "
                             f"{names}: compare runs of one sequence.")
        seeds = [r["seed"] for r in arms.get(run["label"], [])]
        if run["seed"] in seeds:
            raise ValueError(f"Two runs of arm {run['label']!r} have seed {run['seed']}; label them apart "
                             "(LABEL=PATH).")
        arms.setdefault(run["label"], []).append(run)
    return arms


def arm_summary(arms: dict[str, list[dict]]) -> dict[str, dict]:
    """label -> {metric: (mean, sd) x100, "seeds": [...]} over the arm's complete runs."""
    out = {}
    for label, runs in arms.items():
        done = [r for r in runs if r.get("complete", True)]
        if not done:
            continue
        row = {"seeds": [r["seed"] for r in done]}
        for m in METRICS + tuple(FIELD_METRICS):  # a metric n/a in any run is left out ("n/a" in the table)
            if all(r.get(m) is not None for r in done):
                row[m] = mean_sd([100 * r[m] for r in done])
        gates = [g for r in done for g in (r.get("gate") or []) if g and g.get("cosine") is not None]
        if gates:  # stages that had earlier-task data, and how many of them the surgery acted on
            row["gate_fired"] = [sum(bool(g["fired"]) for g in gates), len(gates)]
        out[label] = row
    return out


def paired(arms: dict[str, list[dict]], a: str, b: str, metric: str = "FP") -> dict:
    """metric(a) - metric(b) x100, seed by seed (complete runs of both arms only), with mean, sd,
    the 95% t-interval ``ci`` and the minimum detectable difference ``mdd`` at 80% power
    (`slice_trl.utils.stats.paired_summary`; None where fewer than two seeds pair)."""
    for name in (a, b):
        if name not in arms:
            raise ValueError(f"--pair names arm {name!r}, which is not among the runs: {sorted(arms)}.")
    mine = {r["seed"]: r[metric] for r in arms[a] if r.get("complete", True)}
    other = {r["seed"]: r[metric] for r in arms[b] if r.get("complete", True)}
    seeds = sorted(set(mine) & set(other))
    diffs = [100 * (mine[s] - other[s]) for s in seeds]
    stats = paired_summary(diffs)
    return {"a": a, "b": b, "metric": metric, "seeds": seeds, "diffs": diffs,
            **{k: stats[k] for k in ("mean", "sd", "ci", "mdd")}}


def constant_answers(run: dict) -> dict[str, dict] | None:
    """Per task, how constant the run's answers are after the LAST stage (None when the summary
    has no predictions): ``mode`` (the most common prediction, stripped), ``mode_share`` (its share
    of the scored examples), ``mode_prior`` (the share of held-out references equal to it: the
    score of giving that answer every time, under exact match) and ``at_prior`` (the task's score
    equals a non-zero ``mode_prior``: the score is what the constant answer alone would earn)."""
    final = next((p for p in reversed(run.get("predictions") or []) if p), None)
    if not final:
        return None
    out = {}
    for task in run["task_names"]:
        rows = final.get(task)
        if not rows:
            continue
        n = len(rows)
        mode, k = Counter(r["prediction"].strip() for r in rows).most_common(1)[0]
        prior = sum(r["reference"].strip() == mode for r in rows) / n
        score = statistics.fmean(r["score"] for r in rows)
        out[task] = {"mode": mode, "mode_share": k / n, "mode_prior": prior,
                     "at_prior": prior > 0 and abs(score - prior) < 1e-9}
    return out


def mean_matrix(runs: list[dict]) -> ResultsMatrix:
    """R (and the base row, if every run has one) averaged entry by entry over runs."""
    names = runs[0]["task_names"]
    out = ResultsMatrix(names)
    for i in range(min(len([row for row in r["R"] if row[0] is not None]) for r in runs)):
        cells = [[r["R"][i][j] for r in runs if r["R"][i][j] is not None] for j in range(i + 1)]
        out.set_row(i, [statistics.fmean(c) if c else None for c in cells])  # None: unscored (evaluation.every)
    for i in range(1, len(names)):  # the scores before training (score_upcoming), where every run has one
        if all((r.get("upcoming") or [None] * len(names))[i] is not None for r in runs):
            out.upcoming[i] = statistics.fmean(r["upcoming"][i] for r in runs)
    if all(r.get("base") for r in runs):
        out.set_base([statistics.fmean(r["base"][j] for r in runs) for j in range(len(names))])
    return out


def _fmt(cell, n: int) -> str:
    """mean ± sd; the mean alone for one seed (a sample sd needs two)."""
    if cell is None:
        return "–"
    return f"{cell[0]:.1f}" if n < 2 else f"{cell[0]:.1f} ± {cell[1]:.1f}"


def _constant_table(arms: dict[str, list[dict]], names: list[str]) -> list[str]:
    """Per arm and task: the mean share of the most common final answer over the runs that carry
    predictions, and in how many of them the score is that answer's share of the references."""
    lines = ["| arm | runs with predictions | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label, runs in arms.items():
        found = [c for r in runs if r.get("complete", True) and (c := constant_answers(r)) is not None]
        cells = []
        for task in names:
            rows = [c[task] for c in found if task in c]
            cells.append("n/a" if not rows else f"{100 * statistics.fmean(x['mode_share'] for x in rows):.0f}% "
                         f"({sum(x['at_prior'] for x in rows)}/{len(rows)})")
        lines.append(f"| {label} | {len(found)} | " + " | ".join(cells) + " |")
    return lines


def _interval(p: dict) -> tuple[str, str]:
    if p["ci"] is None:
        return "–", "–"
    return f"[{p['ci'][0]:+.1f}, {p['ci'][1]:+.1f}]", f"{p['mdd']:.1f}"


def tables(arms: dict[str, list[dict]], summary: dict[str, dict], pairs: list[dict]) -> str:
    """The markdown report: arm table, paired differences, constant answers, gate log."""
    with_base = any("learned" in row for row in summary.values())
    cols = list(METRICS if with_base else METRICS[:3])
    lines = ["| arm | seeds | " + " | ".join(cols) + " | surgery fired |", "|---|---|" + "---|" * (len(cols) + 1)]
    for label, row in summary.items():
        fired = "{} of {} stages".format(*row["gate_fired"]) if "gate_fired" in row else "–"
        lines.append(f"| {label} | {len(row['seeds'])} | " + " | ".join(_fmt(row.get(c), len(row["seeds"])) for c in cols)
                     + f" | {fired} |")
    text = ["Scores x100, mean ± sample std over seeds (complete runs only; the mean alone for one seed).",
            "", *lines]
    incomplete = [f"{r['label']} seed {r['seed']}" for runs in arms.values() for r in runs if not r.get("complete", True)]
    if incomplete:
        text += ["", f"Not complete (left out above): {', '.join(incomplete)}."]
    field = [k for k in FIELD_METRICS if any(k in row for row in summary.values())]
    if field:  # the field's metrics (docs/benchmarks.md); n/a: not measurable in some run (e.g. FWT without R_0)
        text += ["", "| arm | seeds | " + " | ".join(FIELD_METRICS[k] for k in FIELD_METRICS) + " |",
                 "|---|---|" + "---|" * len(FIELD_METRICS)]
        text += [f"| {label} | {len(row['seeds'])} | " + " | ".join(
            _fmt(row[k], len(row["seeds"])) if k in row else "n/a" for k in FIELD_METRICS) + " |"
            for label, row in summary.items()]
    if pairs:
        text += ["", "Paired differences by seed: 95% CI = mean ± t(0.975, n-1) sd / sqrt(n); min. detectable = "
                 "the true mean difference a two-sided paired t-test (alpha 0.05) detects with 80% power at this "
                 "sd (exact noncentral t). A difference inside the CI is not ruled out; one below the "
                 "min. detectable would likely go unseen.", "",
                 "| paired difference | seeds | per seed | mean ± sd | 95% CI | min. detectable (80% power) |",
                 "|---|---|---|---|---|---|"]
        for p in pairs:
            per = ", ".join(f"{d:+.1f}" for d in p["diffs"]) or "–"
            mean = "–" if p["mean"] is None else f"{p['mean']:+.1f}" + (f" ± {p['sd']:.1f}" if len(p["diffs"]) > 1 else "")
            ci, mdd = _interval(p)
            text.append(f"| {p['metric']}({p['a']}) - {p['metric']}({p['b']}) | {p['seeds']} | {per} | {mean} | {ci} "
                        f"| {mdd} |")
    names = next(iter(arms.values()))[0]["task_names"]
    text += ["", "Constant answers after the last stage, per task: mean share of the most common answer over the "
             "runs with predictions (in brackets: runs whose score equals the share of the held-out references "
             "that are that answer, i.e. the score of always giving it; n/a: summaries written before predictions "
             "were kept):", "",
             *_constant_table(arms, names)]
    gate = [(label, r) for label, runs in arms.items() for r in runs if any(r.get("gate") or [])]
    if gate:
        text += ["", "Gate log (stages 2..T; cosine = global cosine of G_cur and G_prev, gamma = the global "
                 "coefficient, neg. modules = fraction of modules whose own cosine is negative, fired = "
                 "whether any correction was applied; per_module: modules corrected):", "",
                 "| arm | seed | stage | cosine | gamma | fired | neg. modules | modules corrected |",
                 "|---|---|---|---|---|---|---|---|"]
        for label, r in gate:
            for stage, g in enumerate(r["gate"], start=1):
                if not g or g.get("cosine") is None:
                    continue
                fired_mods = g.get("fired_modules")
                text.append(f"| {label} | {r['seed']} | {stage} | {g['cosine']:+.4f} | {g['gamma']:.4f} | "
                            f"{'yes' if g['fired'] else 'no'} | {100 * g['frac_negative_modules']:.0f}% | "
                            f"{'–' if fired_mods is None else len(fired_mods)} |")
    return "\n".join(text) + "\n"


def fp_vs_ap(summary: dict[str, dict], path: Path, title: str, reference: dict[str, tuple[float, float]]) -> Path:
    """FP against AP per arm (mean ± sd), the FP = AP line, and reference points (hollow)."""
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 5.5))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    markers = "osD^vPX*h<>pd8H"
    colours = matplotlib.colormaps["tab20"].colors  # 20 distinct colours: one per arm, never repeated
    points = []
    for i, (label, row) in enumerate(summary.items()):
        (ap, ap_sd), (fp, fp_sd) = row["AP"], row["FP"]
        ax.errorbar(ap, fp, xerr=ap_sd, yerr=fp_sd, fmt=markers[i % len(markers)], ms=7, capsize=3,
                    color=colours[(2 * i) % 20 + (2 * i) // 20], label=f"{label} (n={len(row['seeds'])})")
        points += [ap, fp]
    for k, (label, (ap, fp)) in enumerate(reference.items()):
        ax.plot(ap, fp, markers[k % len(markers)], ms=9, mfc="none", mec="black", label=label)
        points += [ap, fp]
    lo, hi = min(points) - 5, max(points) + 5
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="FP = AP (no forgetting)")
    ax.set_xlabel("AP: mean score on each task right after training it (x100)")
    ax.set_ylabel("FP: mean final score over all tasks (x100)")
    ax.set_title(title + ("\n(hollow: reference points, another model and scale)" if reference else ""))
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def compare(runs: list[dict], out: str | Path, pairs: list[tuple[str, ...]] = (), title: str = "",
            reference: dict[str, tuple[float, float]] | None = None, prefix: str = "") -> dict:
    """Tables, heatmaps and the FP-vs-AP plot for ``runs`` (summaries) into ``out``; returns the
    JSON payload (also written to ``<prefix>compare.json``)."""
    out = Path(out)
    arms = group(runs)
    summary = arm_summary(arms)
    if not summary:
        raise ValueError("No run is complete yet: nothing to compare.")
    pair_rows = [paired(arms, *pair) for pair in pairs]  # (a, b) or (a, b, metric)
    text = tables(arms, summary, pair_rows)
    out.mkdir(parents=True, exist_ok=True)
    names = runs[0]["task_names"]
    (out / f"{prefix}compare.md").write_text(f"# {title or ' -> '.join(names)}\n\n{text}")
    for label in summary:
        done = [r for r in arms[label] if r.get("complete", True)]
        mean = mean_matrix(done)
        mean.heatmap(out / f"{prefix}R_{label}.png", title=f"{label} (mean R over {len(done)} seeds)")
        if mean.base is not None:
            mean.heatmap(out / f"{prefix}R_{label}_pct_base.png", relative=True,
                         title=f"{label}: % of the base model (mean over {len(done)} seeds)")
    fp_vs_ap(summary, out / f"{prefix}fp_vs_ap.png", title or "Stability vs plasticity", reference or {})
    constant = {label: [{"seed": r["seed"], "tasks": constant_answers(r)} for r in rs] for label, rs in arms.items()}
    payload = {"task_names": names, "summary": summary, "pairs": pair_rows, "constant_answers": constant,
               "runs": {label: [{k: r.get(k) for k in ("seed", "R", "base", "upcoming", *METRICS, *FIELD_METRICS,
                                                       "gate", "complete")} for r in rs] for label, rs in arms.items()}}
    write_json_atomic(out / f"{prefix}compare.json", payload)
    return {**payload, "text": text}


def _reference_point(text: str) -> tuple[str, tuple[float, float]]:
    label, sep, nums = text.rpartition("=")
    try:
        ap, fp = (float(x) for x in nums.split(","))
    except ValueError:
        ap = None
    if not sep or not label or ap is None:
        raise argparse.ArgumentTypeError(f"--reference-point {text!r} must look like 'LABEL=AP,FP' (x100), e.g. "
                                         "'paper vanilla=27.27,12.53'.")
    return label, (ap, fp)


def _pair(text: str) -> tuple[str, ...]:
    parts = text.split(":")
    if len(parts) not in (2, 3) or not all(parts) or (len(parts) == 3 and parts[2] not in METRICS):
        raise argparse.ArgumentTypeError(f"--pair {text!r} must look like 'ARM_A:ARM_B' (FP) or 'ARM_A:ARM_B:METRIC' "
                                         f"with METRIC one of {list(METRICS)}, e.g. 'slice_c1.0_global:lora_ga'.")
    return tuple(parts)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m slice_trl.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", metavar="RUN",
                   help="run folder, summary JSON or Hub repo (user/repo[@revision]), optionally LABEL=RUN")
    p.add_argument("--out", default="compare", help="output folder (default: compare/)")
    p.add_argument("--pair", action="append", type=_pair, default=[], metavar="A:B[:METRIC]",
                   help="paired difference METRIC(A) - METRIC(B) by seed, FP by default (repeatable)")
    p.add_argument("--title", default="")
    p.add_argument("--paper-opp1", action="store_true", help="draw the paper's NI-Seq-Opp1 points (docs/method.md)")
    p.add_argument("--reference-point", action="append", type=_reference_point, default=[],
                   metavar="LABEL=AP,FP", help="an extra hollow point on the FP-vs-AP plot (x100; repeatable)")
    args = p.parse_args(argv)
    try:
        runs = [load_run(spec) for spec in args.runs]
        reference = {**(PAPER_OPP1 if args.paper_opp1 else {}), **dict(args.reference_point)}
        result = compare(runs, args.out, args.pair, args.title, reference)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(result["text"])
    print(f"written to {args.out}/: compare.md, compare.json, R_<arm>.png, fp_vs_ap.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
