"""How stable is SLICE's gate? Redraw the gradient probe of a finished run and watch the cosine.

SLICE fires (corrects G_cur) at stage t when the global cosine of G_cur and G_prev is negative
(docs/method.md). Both are estimated from a small random probe (cur_steps and prev_steps mini-
batches), so the cosine, and with it the decision, carries sampling noise. For a finished SLICE
run folder this script rebuilds, before every stage t >= 2, the model exactly as the run had it
(the base model with stages 1..t-1 re-applied by `slice_trl.trainer.stages.reapply_stage`, as a resumed
run does), then estimates G_cur and G_prev with the run's own code path
(`ContinualSFTTrainer.build_replay_sample` + `initialize_adapter`: the same replay provider,
tokenisation, batching and `estimate_mean_gradients`; the initialiser stops after the surgery's
report, no SVD) for:

- draw 0: the run's own seeds, which must give back the cosine the run recorded (a check that the
  rebuilt state is the run's);
- draws 1..N: other seeds for both the replay sample (G_prev's examples) and the current-task
  batches (G_cur's), i.e. the probe the run could equally have drawn.

Per stage it reports the cosine's mean, sd, min and max over the redraws and how many redraws
reach the other fire decision (cos < 0) than the run's own. Every (stage, draw) result is cached
as one JSON file under ``--cache`` (a rerun resumes); everything runs single-threaded.

    OMP_NUM_THREADS=1 python benchmarks/bench_gate_stability.py runs/bench/opp1/slice_c1.0_each_task_seed0
        [--draws 5] [--results-dir benchmarks/results] [--cache DIR] [--data-dir DIR] [--name gate_stability]
        [--follow]

Writes ``<results-dir>/<name>.json`` and ``.md`` after every draw (marked partial until every
stage and draw is done). ``--follow`` measures a run that is still going: stage t is probed as
soon as stage t - 1 is finished, and the run's own cosine is filled in once stage t is.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported: one thread, as the runs
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # slice_trl from this checkout, also when run as a script

from slice_trl.utils.jsonio import write_json_atomic  # noqa: E402
from slice_trl.utils.run_folder import RunFolder  # noqa: E402

DRAW_SEED_STEP = 1000  # draw d uses the run's seeds + d * 1000 (replay sample and current batches alike)


def draw_seeds(init_seed: int, replay_seed: int, draw: int) -> tuple[int, int]:
    """(init.seed, replay.seed) of draw ``draw``; draw 0 is the run's own."""
    return init_seed + DRAW_SEED_STEP * draw, replay_seed + DRAW_SEED_STEP * draw


def _probe_initializer(config):
    """SLICE's initialiser, stopped after the surgery: G_prev, G_cur and `reconcile` run as in a
    real stage (so the report's cosine is the run's), the SVD/rescale/absorb step is skipped."""
    from slice_trl.initializers import SliceInitializer

    class ProbeOnly(SliceInitializer):
        def _finish(self, model, adapter_name, layers, report):
            return report

    return ProbeOnly(config)


def build_trainer(run_dir: Path, scratch: Path, data_dir: str | None = None):
    """The run's recipe (run.json) rebuilt into a `ContinualSFTTrainer` writing only to ``scratch``,
    with the probe-only initialiser; refuses when the rebuilt settings or task data differ from
    the run's fingerprint. Returns (trainer, run.json)."""
    from transformers import AutoTokenizer

    from slice_trl.models import integrity
    from slice_trl.models.loading import load_model_and_tokenizer, resolve_model_path
    from slice_trl.cli.recipe import load_recipe
    from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

    info = RunFolder(run_dir).read_run()
    if info.get("init", {}).get("method") != "slice" or info.get("strategy"):
        raise SystemExit(f"{run_dir} is not a SLICE run without a strategy (init.method = "
                         f"{info.get('init', {}).get('method')!r}): its gate has nothing to measure.")
    raw = {**info["recipe"], "output_dir": str(scratch), "report_to": "none"}
    if data_dir:
        raw["data_dir"] = data_dir
    recipe = load_recipe(None, raw)
    m = recipe.model
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(m.model_name_or_path), revision=m.model_revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tasks = recipe.load_tasks(tokenizer)
    model, _ = load_model_and_tokenizer(m.model_name_or_path, dtype=m.dtype or "float32", revision=m.model_revision,
                                        attn_implementation=m.attn_implementation)
    trainer = ContinualSFTTrainer(model=model, args=recipe.training, tasks=tasks, peft_config=recipe.lora_config(),
                                  processing_class=tokenizer, initializer=_probe_initializer(recipe.training.init),
                                  run_info={"base_model": m.model_name_or_path,
                                            "base_model_revision": m.model_revision}, model_args=m)
    diff = integrity.differences(info[integrity.FINGERPRINT], trainer.fingerprint, skip=("data_dir",))
    if diff:
        raise SystemExit(f"The rebuilt run differs from {run_dir}: {diff[:5]}")
    return trainer, info


def probe(trainer, t: int, init_seed: int, replay_seed: int) -> dict:
    """The gate of stage t (0-indexed) on the trainer's current model with the given seeds: the
    trainer's own replay draw and probe batches, then SLICE's surgery report."""
    from transformers import set_seed

    from slice_trl.trainer.replay import ReplaySampleProvider, stage_seed

    args = trainer.args
    args.init.seed = init_seed  # the current-task batches' seed (initialize_adapter)
    trainer.replay_provider = ReplaySampleProvider(dataclasses.replace(args.replay, seed=replay_seed))
    set_seed(stage_seed(args.seed, t))  # as the trainer's loop does before each stage
    t0 = time.perf_counter()
    replay = trainer.build_replay_sample(t)
    report = trainer.initialize_adapter(t, replay)
    trainer.model = trainer.model_wrapped = trainer.model.unload()  # the probe's adapter (B = 0) goes
    s = report.surgery
    return {"cosine": s["cosine"], "gamma": s["gamma"], "fired": s["fired"],
            "frac_negative_modules": s["frac_negative_modules"], "n_batches_cur": report.n_batches_cur,
            "n_batches_prev": report.n_batches_prev, "replay_examples": [len(d) for d in replay],
            "init_seed": init_seed, "replay_seed": replay_seed, "seconds": time.perf_counter() - t0}


def summarise(stage: int, recorded: dict | None, draws: dict[int, dict], n_draws: int) -> dict:
    """One stage's row: the run's cosine (None while its stage is unfinished), draw 0's, and the
    redraws' spread and flips (redraws reaching the other decision than the run's)."""
    redraws = [draws[d]["cosine"] for d in range(1, n_draws + 1) if d in draws]
    row = {"stage": stage, "recorded_cosine": recorded["cosine"] if recorded else None,
           "recorded_fired": recorded["fired"] if recorded else None,
           "own_draw_cosine": draws[0]["cosine"] if 0 in draws else None, "n_redraws": len(redraws),
           "redraw_cosines": redraws,
           "flips": sum((c < 0) != (recorded["cosine"] < 0) for c in redraws) if recorded else None}
    if redraws:
        row.update(mean=statistics.fmean(redraws), sd=statistics.stdev(redraws) if len(redraws) > 1 else None,
                   min=min(redraws), max=max(redraws))
    first = draws.get(0) or next(iter(draws.values()), None)
    if first is not None:
        row["probe_examples"] = {"cur": first["n_batches_cur"], "prev_batches": first["n_batches_prev"],
                                 "prev_examples": first["replay_examples"]}
    return row


def write_report(path: Path, run_dir: Path, info: dict, rows: list[dict], complete: bool, n_draws: int) -> None:
    init = info["init"]
    payload = {"run": str(run_dir), "seed": info.get("seed"), "init": init, "draws": n_draws, "complete": complete,
               "draw_seed_step": DRAW_SEED_STEP, "stages": rows}
    write_json_atomic(path.with_suffix(".json"), payload)
    b = init["batch_size"]
    lines = [f"# Gate stability: {run_dir.name}" + ("" if complete else " (PARTIAL: not every stage/draw done)"), "",
             f"Run `{run_dir}` (seed {info.get('seed')}, c = {init['c']}, projection {init['projection']}, "
             f"prev_batching {init['prev_batching']}, G_cur from {init['cur_steps']} x {b} examples, G_prev from "
             f"{init['prev_steps']} x {b} examples {'per earlier task' if init['prev_batching'] == 'each_task' else 'pooled'}). "
             f"Draw 0 = the run's own seeds (must give the recorded cosine back); {n_draws} redraws with seeds + "
             f"{DRAW_SEED_STEP} x d for both the replay sample and the current-task batches. flips = redraws whose fire "
             "decision (cos < 0) differs from the run's.", "",
             "| stage | G_prev examples | recorded cosine | draw 0 (check) | redraws | mean | sd | min | max | flips |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f = (lambda k: "–" if r.get(k) is None else f"{r[k]:+.4f}")
        prev = sum(r.get("probe_examples", {}).get("prev_examples", [])) or "–"
        sd = "–" if r.get("sd") is None else f"{r['sd']:.4f}"
        flips = "–" if r["flips"] is None else f"{r['flips']} of {r['n_redraws']}"
        lines.append(f"| {r['stage']} | {prev} | {f('recorded_cosine')} | {f('own_draw_cosine')} | "
                     f"{r['n_redraws']} | {f('mean')} | {sd} | {f('min')} | {f('max')} | {flips} |")
    path.with_suffix(".md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir", help="a finished SLICE run folder (output_dir of slice_trl.run)")
    p.add_argument("--draws", type=int, default=5, help="redraws per stage (besides the run's own draw 0)")
    p.add_argument("--results-dir", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--name", default="gate_stability", help="results file stem (<name>.json / <name>.md)")
    p.add_argument("--cache", default=None, help="per (stage, draw) results (default: <run_dir>/../gate_stability_"
                   "<run name>; a rerun resumes from it)")
    p.add_argument("--data-dir", default=None, help="task data folder, when it moved since the run")
    p.add_argument("--only-draws", type=int, nargs="+", default=None, metavar="D",
                   help="compute only these draws in this invocation (e.g. 1 2: two redraws at every stage first, "
                   "the rest by a later call); the report uses every draw in the cache")
    p.add_argument("--follow", action="store_true", help="the run is still going: probe each stage as soon as the "
                   "stage before it is finished (polling every minute) until the last stage is done")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from slice_trl.trainer import stages

    run_dir = Path(args.run_dir).resolve()
    run = RunFolder(run_dir)
    if not run.run_file.is_file():
        p.error(f"run_dir {run_dir} has no {run.RUN}: give the output_dir of a SLICE run.")
    cache = Path(args.cache) if args.cache else run_dir.parent / f"gate_stability_{run_dir.name}"
    out = Path(args.results_dir) / args.name
    names = run.read_run()["task_names"]
    folder = (lambda t: run.stage(t, names[t]))

    def finished(t: int) -> bool:  # a stage is finished iff its record exists (written last)
        while args.follow and not folder(t).finished:
            time.sleep(60)
        return folder(t).finished

    if not finished(0):
        p.error(f"{run_dir} has no finished stage: the gate first acts at stage 2, on stage 1's model.")
    trainer, info = build_trainer(run_dir, cache / "scratch", args.data_dir)
    own_init, own_replay = trainer.args.init.seed, trainer.args.replay.seed
    probed: dict[int, dict] = {}  # stage (0-indexed) -> {draw: result}; every cached draw is reported
    for t in range(1, len(names)):  # (also the stages this invocation has not reached yet)
        found = {d: json.loads(f.read_text()) for d in range(args.draws + 1)
                 if (f := cache / f"stage{t + 1}_draw{d}.json").is_file()}
        if found:
            probed[t] = found

    def report() -> bool:
        recorded = {t: folder(t).read_record()["init"]["surgery"] if folder(t).finished else None
                    for t in probed}
        rows = [summarise(t + 1, recorded[t], draws, args.draws) for t, draws in probed.items()]
        complete = (len(probed) == len(names) - 1 and all(recorded.values())
                    and all(len(d) == args.draws + 1 for d in probed.values()))
        write_report(out, run_dir, info, rows, complete, args.draws)
        return complete

    for t in range(1, len(names)):
        if not finished(t - 1):  # probing stage t needs the model after stage t - 1
            break
        trainer.model = stages.reapply_stage(trainer.model, trainer.lora_config, folder(t - 1))
        probed.setdefault(t, {})
        for d in range(args.draws + 1):
            path = cache / f"stage{t + 1}_draw{d}.json"
            if path.is_file():
                probed[t][d] = json.loads(path.read_text())
                continue
            if args.only_draws is not None and d not in args.only_draws:
                continue
            probed[t][d] = probe(trainer, t, *draw_seeds(own_init, own_replay, d))
            write_json_atomic(path, probed[t][d])
            print(f"[{time.strftime('%H:%M:%S')}] stage {t + 1} draw {d}: cosine {probed[t][d]['cosine']:+.4f} "
                  f"({probed[t][d]['seconds']:.0f} s)", flush=True)
            report()
    if probed:
        finished(len(names) - 1)  # --follow: the last stage's record holds the last recorded cosine
    report()
    print(out.with_suffix(".md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
