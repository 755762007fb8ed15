"""What scoring after every stage costs as a sequence grows (issue 28, docs/benchmarks.md "Cost"),
measured on SuperNI-15 order 1 with SmolLM2-135M-Instruct on CPU (one thread).

Each of the 15 tasks is scored once on the base model (``evaluate_task``: the first ``--max-eval``
test examples, greedy, up to ``--max-new-tokens`` tokens), timed in wall and CPU seconds. A stage's
evaluation is the sum of the tasks it scores (`slice_trl.evaluation.schedule.tasks_to_score`), so the
seconds per stage and per run follow for every length T = 1..15 and every schedule: every stage
(T(T+1)/2 task evaluations), ``every: 5``, and each with ``score_upcoming``. The tables use CPU
seconds (the core cost; on a shared machine wall time is longer and varies with the load). The
per-task times are the base model's: a trained model's answers can be shorter or longer (the real
runs' per-stage eval seconds are in benchmarks/results/<benchmark>/compare.md).

    python benchmarks/bench_eval_cost.py --max-eval 8 --max-new-tokens 40   # -> benchmarks/results/eval_cost_superni15.*
    python benchmarks/bench_eval_cost.py --from-json benchmarks/results/eval_cost_superni15.json   # tables only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from slice_trl.configs.config import EvalConfig  # noqa: E402
from slice_trl.evaluation.schedule import task_evaluations, tasks_to_score  # noqa: E402
from slice_trl.utils.jsonio import write_json_atomic  # noqa: E402

SHARED = next((p for p in (ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data") if p.is_dir()),
              ROOT.parent / "shared" / "data")
SCHEDULES = {"every stage": {}, "every stage + upcoming": {"score_upcoming": True},
             "every: 5": {"every": 5}, "every: 5 + upcoming": {"every": 5, "score_upcoming": True}}


def measure(max_eval: int, max_new_tokens: int) -> dict:
    """Score each SuperNI-15 order-1 task once on the base model; wall and CPU seconds per task."""
    import torch

    torch.set_num_threads(1)
    from slice_trl.evaluation import evaluate_task
    from slice_trl.models.loading import load_model_and_tokenizer
    from slice_trl.tasks import TaskSpec, build_tasks
    from slice_trl.tasks.sequences import expand_sequence

    model, tok = load_model_and_tokenizer("smollm2-135m-instruct")
    specs = [TaskSpec.from_dict({**e, "max_eval": max_eval, "max_train": 1}, base_dir=SHARED / "superni15")
             for e in expand_sequence("superni15/order1")]
    cfg = EvalConfig(max_samples=max_eval, batch_size=8, max_new_tokens=max_new_tokens)
    wall, cpu = {}, {}
    for task in build_tasks(specs, tok, 256):
        t0, c0 = time.perf_counter(), time.process_time()
        score = evaluate_task(model, tok, task, cfg)
        wall[task.name], cpu[task.name] = time.perf_counter() - t0, time.process_time() - c0
        print(f"{task.name}: {wall[task.name]:.1f} s ({cpu[task.name]:.1f} s CPU) for {score.n} examples", flush=True)
    return {"model": "smollm2-135m-instruct", "max_eval": max_eval, "max_new_tokens": max_new_tokens, "threads": 1,
            "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_1min": os.getloadavg()[0]},
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "task_seconds": wall,
            "task_cpu_seconds": cpu}


def schedules(cpu: list[float]) -> dict:
    """Per schedule and prefix length T: task evaluations, CPU seconds per run and per stage."""
    out = {}
    for label, extra in SCHEDULES.items():
        cfg = EvalConfig(**extra)
        out[label] = []
        for T in range(1, len(cpu) + 1):  # a sequence of the first T tasks
            stage_s = [sum(cpu[j] for j in tasks_to_score(t, T, cfg)) for t in range(T)]
            out[label].append({"T": T, "task_evaluations": task_evaluations(T, cfg, score_base=False),
                               "eval_cpu_s": sum(stage_s), "eval_cpu_s_per_stage": stage_s})
    return out


def write(payload: dict, out: Path) -> str:
    cpu = list(payload["task_cpu_seconds"].values())
    table = payload["schedules"] = schedules(cpu)
    write_json_atomic(out.with_suffix(".json"), payload)
    lines = [f"# Evaluation cost on SuperNI-15 order 1 (SmolLM2-135M, 1 thread, {payload['max_eval']} test examples "
             f"per task, up to {payload['max_new_tokens']} new tokens; {payload['date']}, 1-min load "
             f"{payload['machine']['load_1min']:.1f} on {payload['machine']['cpus']} cores)", "",
             "Per task on the base model, CPU s (wall s): " + ", ".join(
                 f"{k.split('_')[0]} {payload['task_cpu_seconds'][k]:.1f} ({v:.1f})"
                 for k, v in payload["task_seconds"].items()), "",
             "Task evaluations and CPU seconds of seen-task evaluation for a run of the first T tasks:", "",
             "| T | " + " | ".join(f"{k}: task evals / CPU s" for k in SCHEDULES) + " |",
             "|---|" + "---|" * len(SCHEDULES)]
    for i in range(len(cpu)):
        lines.append(f"| {i + 1} | " + " | ".join(
            f"{table[k][i]['task_evaluations']} / {table[k][i]['eval_cpu_s']:.0f}" for k in SCHEDULES) + " |")
    lines += ["", "CPU seconds of evaluation per stage of the whole 15-task run (stage 1..15):", ""]
    lines += [f"- {k}: " + ", ".join(f"{s:.0f}" for s in table[k][-1]["eval_cpu_s_per_stage"]) for k in SCHEDULES]
    text = "\n".join(lines) + "\n"
    out.with_suffix(".md").write_text(text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--max-eval", type=int, default=8, help="test examples scored per task")
    p.add_argument("--max-new-tokens", type=int, default=40)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "eval_cost_superni15"))
    p.add_argument("--from-json", default=None, help="rebuild the tables from a measured JSON; measure nothing")
    args = p.parse_args(argv)
    payload = (json.loads(Path(args.from_json).read_text()) if args.from_json
               else measure(args.max_eval, args.max_new_tokens))
    print(write(payload, Path(args.out)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
