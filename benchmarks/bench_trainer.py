"""Trainer overhead and evaluation speed on SmolLM2-135M-Instruct (CPU).

1. Training throughput (tokens/s) of one ContinualSFTTrainer stage vs a plain trl.SFTTrainer run:
   same model, data, LoRA and SFTConfig settings; the continual stage uses the vanilla init so
   the comparison isolates the loop (initialisation cost is measured by bench_init.py).
   Target: ratio >= 0.97.
2. Evaluation throughput (examples/s) of batched greedy generation (left padding, KV cache) vs
   one example at a time. Target: >= 3x.

Runs alternate (plain, continual, continual, plain, ...) and the best of each is kept (the
median is reported too), to damp noise from other load on the machine: run it on a quiet machine.
Writes benchmarks/results/trainer_benchmark.{json,md}.

    python benchmarks/bench_trainer.py [--repeats 2] [--n-train 64]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def lora():
    from peft import LoraConfig

    return LoraConfig(r=8, lora_alpha=8, use_rslora=True, lora_dropout=0.0, target_modules=TARGETS)


def common_args(out: str) -> dict:
    return dict(output_dir=out, num_train_epochs=1, per_device_train_batch_size=8, learning_rate=1e-3,
                warmup_steps=0, max_length=96, seed=0, use_cpu=True, disable_tqdm=True, logging_steps=1000,
                report_to="none", save_strategy="no", bf16=False, activation_checkpointing=False)


def n_tokens(prepared) -> int:
    return sum(len(ids) for ids in prepared["input_ids"])


def plain_run(base, tokenizer, task) -> float:
    from trl import SFTConfig, SFTTrainer

    with tempfile.TemporaryDirectory() as out:
        trainer = SFTTrainer(model=copy.deepcopy(base), args=SFTConfig(**common_args(out)), train_dataset=task.train,
                             processing_class=tokenizer, peft_config=lora())
        tokens = n_tokens(trainer.train_dataset)
        t0 = time.perf_counter()
        trainer.train()
        return tokens / (time.perf_counter() - t0)


def continual_run(base, tokenizer, task) -> float:
    from slice_trl.configs.config import ContinualSFTConfig
    from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

    with tempfile.TemporaryDirectory() as out:
        args = ContinualSFTConfig(**common_args(out), init={"method": "vanilla"})
        trainer = ContinualSFTTrainer(model=copy.deepcopy(base), args=args, tasks=[task], processing_class=tokenizer,
                                      peft_config=lora())
        tokens = n_tokens(trainer.prepared_train(task))
        trainer.attach_adapter()
        t0 = time.perf_counter()
        trainer.train_stage(0)
        return tokens / (time.perf_counter() - t0)


def eval_speed(model, tokenizer, task, batch_size: int) -> float:
    from slice_trl.configs.config import EvalConfig
    from slice_trl.evaluation import evaluate_task

    cfg = EvalConfig(max_samples=len(task.eval), batch_size=batch_size, max_new_tokens=8)
    t0 = time.perf_counter()
    evaluate_task(model, tokenizer, task, cfg)
    return len(task.eval) / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--n-train", type=int, default=64)
    ap.add_argument("--n-eval", type=int, default=32)
    args = ap.parse_args()

    from slice_trl.models.loading import load_model_and_tokenizer
    from slice_trl.tasks import TaskSpec, build_task

    base, tokenizer = load_model_and_tokenizer("smollm2-135m-instruct")
    task = build_task(TaskSpec(source="builtin", task="first", max_train=args.n_train, max_eval=args.n_eval),
                      tokenizer, 96)
    plain, continual = [], []
    for i in range(args.repeats):  # alternate which goes first: drifting load hits both alike
        if i % 2 == 0:
            plain.append(plain_run(base, tokenizer, task))
            continual.append(continual_run(base, tokenizer, task))
        else:
            continual.append(continual_run(base, tokenizer, task))
            plain.append(plain_run(base, tokenizer, task))
    batched = max(eval_speed(base, tokenizer, task, 16) for _ in range(args.repeats))
    single = max(eval_speed(base, tokenizer, task, 1) for _ in range(args.repeats))
    result = {
        "model": "SmolLM2-135M-Instruct (fp32, CPU)",
        "setup": {"n_train": args.n_train, "batch": 8, "max_length": 96, "lora_r": 8, "repeats": args.repeats,
                  "n_eval": args.n_eval, "eval_batch": 16, "max_new_tokens": 8},
        "train_tokens_per_s": {"plain_sft": plain, "continual_stage": continual},
        "train_ratio_best": max(continual) / max(plain),
        "train_ratio_median": statistics.median(continual) / statistics.median(plain),
        "train_ratio_target": 0.97,
        "eval_examples_per_s": {"batched_16": batched, "one_at_a_time": single},
        "eval_speedup": batched / single,
        "eval_speedup_target": 3.0,
        "machine": {"cpus": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "python": platform.python_version(), "load_avg_at_end": os.getloadavg()},
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "trainer_benchmark.json").write_text(json.dumps(result, indent=2))
    md = [
        "# Trainer benchmark (SmolLM2-135M-Instruct, CPU)", "",
        "| measure | value | target |", "|---|---|---|",
        f"| training tokens/s, plain SFTTrainer (best of {args.repeats}) | {max(plain):.0f} | |",
        f"| training tokens/s, ContinualSFTTrainer stage (best of {args.repeats}) | {max(continual):.0f} | |",
        f"| ratio continual / plain (best of each) | {result['train_ratio_best']:.3f} | >= 0.97 |",
        f"| ratio continual / plain (median of each) | {result['train_ratio_median']:.3f} | |",
        f"| eval examples/s, batched (16) | {batched:.2f} | |",
        f"| eval examples/s, one at a time | {single:.2f} | |",
        f"| eval speed-up | {result['eval_speedup']:.1f}x | >= 3x |", "",
        f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
        "(other work on the machine makes single runs noisy).",
    ]
    (RESULTS / "trainer_benchmark.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
