"""What scoring after every stage costs as a sequence grows (issue 28, docs/benchmarks.md "Cost"),
measured on SuperNI-15 order 1 with SmolLM2-135M-Instruct on CPU (one thread).

Each of the 15 tasks is scored once on the base model (``evaluate_task``: the first ``--max-eval``
test examples, greedy, up to ``--max-new-tokens`` tokens), timed. A stage's evaluation is the sum of
the tasks it scores (`slice_trl.evaluation.schedule.tasks_to_score`), so the seconds per stage and
per run follow for every length T = 1..15 and every schedule: every stage (T(T+1)/2 task
evaluations), ``every: 5``, and each with ``score_upcoming``. The per-task times are the base
model's: a trained model's answers can be shorter or longer (the real runs' per-stage eval seconds
are in benchmarks/results/<benchmark>/compare.md).

    python benchmarks/bench_eval_cost.py                  # -> benchmarks/results/eval_cost_superni15.{json,md}
    python benchmarks/bench_eval_cost.py --max-eval 8 --max-new-tokens 40
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slice_trl.results import write_json_atomic  # noqa: E402

SHARED = next((p for p in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data") if p.is_dir()),
              ROOT.parent / "shared" / "data")
SCHEDULES = {"every stage": {}, "every stage + upcoming": {"score_upcoming": True},
             "every: 5": {"every": 5}, "every: 5 + upcoming": {"every": 5, "score_upcoming": True}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-eval", type=int, default=4, help="test examples scored per task")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_cost_superni15"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from slice_trl.config import EvalConfig
    from slice_trl.evaluation import evaluate_task
    from slice_trl.evaluation.schedule import task_evaluations, tasks_to_score
    from slice_trl.models import load_model_and_tokenizer
    from slice_trl.tasks import TaskSpec, build_tasks
    from slice_trl.tasks.sequences import expand_sequence

    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    specs = [TaskSpec.from_dict({**e, "max_eval": args.max_eval, "max_train": 1}, base_dir=SHARED / "superni15")
             for e in expand_sequence("superni15/order1")]
    tasks = build_tasks(specs, tok, 256)
    cfg = EvalConfig(max_samples=args.max_eval, batch_size=8, max_new_tokens=args.max_new_tokens)
    seconds, cpu = [], []  # wall and this process's CPU time: on a shared machine they differ
    for task in tasks:
        t0, c0 = time.perf_counter(), time.process_time()
        score = evaluate_task(model, tok, task, cfg)
        seconds.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        print(f"{task.name}: {seconds[-1]:.1f} s ({cpu[-1]:.1f} s CPU) for {score.n} examples", flush=True)
    names = [t.name for t in tasks]
    n = len(tasks)
    table = {}
    for label, extra in SCHEDULES.items():
        sched = EvalConfig(**extra)
        per_length = []
        for T in range(1, n + 1):  # a sequence of the first T tasks
            stage_s = [sum(seconds[j] for j in tasks_to_score(t, T, sched)) for t in range(T)]
            per_length.append({"T": T, "task_evaluations": task_evaluations(T, sched, score_base=False),
                               "eval_s": sum(stage_s), "eval_s_per_stage": stage_s})
        table[label] = per_length
    payload = {"what": "seconds of seen-task evaluation per stage and per run, SuperNI-15 order 1 prefixes of "
                       "length T, from each task's measured evaluation time on the base model",
               "model": "smollm2-135m-instruct", "max_eval": args.max_eval, "max_new_tokens": args.max_new_tokens,
               "threads": 1, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                         "load_1min": os.getloadavg()[0]},
               "task_seconds": dict(zip(names, seconds)), "task_cpu_seconds": dict(zip(names, cpu)),
               "schedules": table,
               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), payload)
    lines = [f"# Evaluation cost on SuperNI-15 order 1 (SmolLM2-135M, 1 thread, {args.max_eval} test examples per "
             f"task, up to {args.max_new_tokens} new tokens; {payload['date']}, 1-min load "
             f"{payload['machine']['load_1min']:.1f})", "",
             "Per task on the base model, wall s (CPU s): " + ", ".join(
                 f"{k.split('_')[0]} {v:.1f} ({c:.1f})" for (k, v), c in zip(payload["task_seconds"].items(), cpu)),
             "", "Eval seconds below are wall seconds, from the per-task wall times.", "",
             "| T | " + " | ".join(f"{k}: task evals / eval s" for k in SCHEDULES) + " |",
             "|---|" + "---|" * len(SCHEDULES)]
    for i in range(n):
        lines.append(f"| {i + 1} | " + " | ".join(f"{table[k][i]['task_evaluations']} / {table[k][i]['eval_s']:.0f}"
                                                   for k in SCHEDULES) + " |")
    lines += ["", "Eval seconds per stage of the whole 15-task run (stage 1..15):", ""]
    lines += [f"- {k}: " + ", ".join(f"{s:.0f}" for s in table[k][-1]["eval_s_per_stage"]) for k in SCHEDULES]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
