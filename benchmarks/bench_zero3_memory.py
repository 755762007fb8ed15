"""Peak memory of SLICE's gradient probe under DeepSpeed ZeRO-3, per rank (README, "Memory of SLICE's
gradient sets"): does every rank hold full-size G sets, as the README's table says?

Two CPU processes (gloo), DeepSpeed ZeRO-3 for real with every parameter partitioned
(``stage3_param_persistence_threshold: 0``), a tiny random Llama at two sizes. Per rank: the
model is wrapped with a fresh LoRA adapter and partitioned by ``deepspeed.initialize``; then the
RSS is read, the kernel's peak counter reset (``/proc/self/clear_refs`` = 5, so VmHWM restarts
at the current RSS), SLICE's initialiser run (G_prev over 2 mini-batches, then G_cur over 2,
surgery, SVD, absorption), and VmHWM read again. The increase is compared with the full-size G
sets over the target weights (q, k, v, o, gate, up, down) that the README's table counts:
G_cur fp32 + G_prev fp32 = 8 bytes per target weight (6 with ``prev_grad_dtype: bfloat16``),
and with what a sharded set would take (that divided by the 2 ranks). The same is measured on one
process without DeepSpeed for reference. Each configuration runs in fresh processes.

Usage: python benchmarks/bench_zero3_memory.py [--sizes 512:1408 1024:2816] [--layers 4]
Writes benchmarks/results/zero3_memory.{json,md}. About 3-4 min on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
MB = 1024 ** 2


def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def worker(hidden: int, intermediate: int, layers: int, prev_dtype: str, zero3: bool, out: str) -> None:
    import torch
    from datasets import Dataset
    from peft import LoraConfig, get_peft_model

    from slice_trl.utils import distributed
    from slice_trl.trainer.batching import default_collator, prepare_sft_dataset, sample_batches
    from slice_trl.initializers import SliceInitializer
    from slice_trl.models.lora import ADAPTER
    from slice_trl.configs.settings import InitConfig
    from slice_trl.utils.testing import no_deepspeed_op_builds, tiny_llama, tiny_tokenizer

    torch.set_num_threads(1)
    if zero3:
        no_deepspeed_op_builds()
        import deepspeed
        from transformers.integrations import HfDeepSpeedConfig

        deepspeed.init_distributed(dist_backend="gloo")
    rank, world = distributed.rank_and_world()
    tok = tiny_tokenizer()

    def batches(answer: str, seed: int):
        rows = [{"prompt": [{"role": "user", "content": f"w{i}x"}],
                 "completion": [{"role": "assistant", "content": answer}]} for i in range(16)]
        prepared = prepare_sft_dataset(Dataset.from_list(rows), tok, max_length=32)
        return sample_batches(prepared, default_collator(tok), batch_size=4, n_batches=2, seed=seed)

    cur, prev = batches("yes", 1), batches("no", 2)
    model = get_peft_model(tiny_llama(seed=1, hidden_size=hidden, layers=layers, intermediate=intermediate),
                           LoraConfig(r=8, lora_alpha=2, target_modules=TARGETS, lora_dropout=0.0, use_rslora=True))
    from slice_trl.models.lora import lora_layers

    n_target = sum(layer.get_base_layer().weight.numel() for layer in lora_layers(model, ADAPTER).values())
    n_params = sum(p.numel() for p in model.parameters())
    if zero3:
        ds_config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                     "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
                     "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
        keep = HfDeepSpeedConfig(ds_config)  # noqa: F841 - makes is_deepspeed_zero3_enabled() true
        deepspeed.initialize(model=model, config=ds_config,
                             model_parameters=[p for p in model.parameters() if p.requires_grad])
        q = model.base_model.model.model.layers[0].self_attn.q_proj.get_base_layer().weight
        assert distributed.zero3_enabled() and q.numel() == 0, "not partitioned"
    distributed.barrier()
    rss = _status_kb("VmRSS") * 1024
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    t0 = time.perf_counter()
    report = SliceInitializer(InitConfig(method="slice", cur_steps=2, prev_steps=2, batch_size=4, micro_batch_size=4,
                                         prev_grad_dtype=prev_dtype))(model, ADAPTER, cur, prev)
    seconds = time.perf_counter() - t0
    peak = _status_kb("VmHWM") * 1024
    result = {"rank": rank, "world": world, "rss_before_bytes": rss, "peak_bytes": peak,
              "increase_bytes": peak - rss, "target_weights": n_target, "parameters": n_params,
              "seconds": seconds, "fired": report.surgery["fired"]}
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(result))
    distributed.barrier()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(hidden: int, intermediate: int, layers: int, prev_dtype: str, zero3: bool, tmp: Path) -> list[dict]:
    out = tmp / f"h{hidden}_{prev_dtype}_{'zero3' if zero3 else 'one'}"
    args = [str(Path(__file__).resolve()), "--worker", str(hidden), str(intermediate), str(layers), prev_dtype,
            "1" if zero3 else "0", str(out)]
    cmd = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
            str(_free_port())] if zero3 else [sys.executable]) + args
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-4000:]}")
    return [json.loads(p.read_text()) for p in sorted(out.glob("rank*.json"))]


def markdown(res: dict) -> str:
    lines = ["# SLICE's probe under DeepSpeed ZeRO-3: peak memory per rank (CPU, 2 processes)", "",
             f"Measured {res['date']} on {res['machine']} (load average {res['load_average_1min']:.1f} at the start). "
             "Increase = peak RSS during the initialiser minus RSS before it (VmHWM reset), per rank. Full sets = "
             "the README table's count: 4 bytes x target weights for G_cur plus 4 (fp32) or 2 (bf16) for G_prev; "
             "sharded = full / 2 ranks.", "",
             "| model (hidden / intermediate / layers) | target weights | G_prev | run | rank | increase MB | "
             "full sets MB | sharded MB | increase / full |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in res["runs"]:
        for k in r["ranks"]:
            lines.append(f"| {r['hidden']} / {r['intermediate']} / {r['layers']} | {r['target_weights'] / 1e6:.2f} M | "
                         f"{r['prev_grad_dtype']} | {r['run']} | {k['rank']} | {k['increase_bytes'] / MB:.0f} | "
                         f"{r['full_sets_bytes'] / MB:.0f} | {r['full_sets_bytes'] / 2 / MB:.0f} | "
                         f"{k['increase_bytes'] / r['full_sets_bytes']:.2f} |")
    lines += ["", res["conclusion"], ""]
    return "\n".join(lines)


def conclude(runs: list[dict]) -> str:
    """Per G_prev dtype and run: the slope of the per-rank increase between the two sizes, in bytes
    per target weight (the constant overhead cancels): the README's table predicts 8 (fp32 G_prev)
    or 6 (bf16) for full-size sets on every rank, half that if they were sharded over 2 ranks."""
    parts, slope = [], {}
    for dtype in dict.fromkeys(r["prev_grad_dtype"] for r in runs):
        for kind in dict.fromkeys(r["run"] for r in runs):
            rs = sorted((r for r in runs if r["prev_grad_dtype"] == dtype and r["run"] == kind),
                        key=lambda r: r["target_weights"])
            if len(rs) < 2:
                continue
            lo, hi = rs[0], rs[-1]
            slopes = [(h["increase_bytes"] - l_["increase_bytes"]) / (hi["target_weights"] - lo["target_weights"])
                      for l_, h in zip(lo["ranks"], hi["ranks"], strict=True)]
            slope[dtype, kind] = min(slopes)
            want = 4 + (4 if dtype == "float32" else 2)
            parts.append(f"G_prev {dtype}, {kind}: {' / '.join(f'{x:.1f}' for x in slopes)} bytes per target weight "
                         f"(full sets: {want}, sharded over 2 ranks: {want / 2:g})")
    if not parts:
        return "One size only: no slope."
    extra = [slope[d, k] - slope[d, "1 process"] for d, k in slope if k != "1 process" and (d, "1 process") in slope]
    return ("Growth of the peak between the two sizes, per rank: " + "; ".join(parts) + ". Every ZeRO-3 rank grows "
            "by more than the full-size sets per target weight (a sharded set would add half of them): G_cur and "
            "G_prev are full-size on every rank, as the README's table says. ZeRO-3 adds "
            + (f"{min(extra):.1f}-{max(extra):.1f}" if extra else "?") + " bytes per target weight over one process "
            "(not attributed further here), which the table does "
            "not count.")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["512:1408", "1024:2816"], help="hidden:intermediate pairs")
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--prev-dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--results-dir", default=str(RESULTS))
    ap.add_argument("--render", action="store_true", help="rewrite the .md (and conclusion) from the .json")
    args = ap.parse_args()
    if args.render:
        path = Path(args.results_dir) / "zero3_memory.json"
        res = json.loads(path.read_text())
        res["conclusion"] = conclude(res["runs"])
        path.write_text(json.dumps(res, indent=1))
        (path.parent / "zero3_memory.md").write_text(markdown(res))
        return
    import tempfile

    load = os.getloadavg()[0]
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            hidden, intermediate = (int(x) for x in size.split(":"))
            for prev_dtype in args.prev_dtypes:
                for zero3 in (True, False):
                    ranks = measure(hidden, intermediate, args.layers, prev_dtype, zero3, Path(tmp))
                    n = ranks[0]["target_weights"]
                    full = n * (4 + (4 if prev_dtype == "float32" else 2))
                    runs.append({"hidden": hidden, "intermediate": intermediate, "layers": args.layers,
                                 "prev_grad_dtype": prev_dtype, "run": "ZeRO-3, 2 ranks" if zero3 else "1 process",
                                 "target_weights": n, "full_sets_bytes": full, "ranks": ranks})
                    print(f"h={hidden} {prev_dtype} {'zero3' if zero3 else 'one'}: increase/full = "
                          + ", ".join(f"{k['increase_bytes'] / full:.2f}" for k in ranks), flush=True)
    conclusion = conclude(runs)
    res = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": f"{platform.machine()}, "
           f"{os.cpu_count()} CPUs", "load_average_1min": load, "runs": runs, "conclusion": conclusion}
    out = Path(args.results_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "zero3_memory.json").write_text(json.dumps(res, indent=1))
    (out / "zero3_memory.md").write_text(markdown(res))
    print(conclusion)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        h, i, n_layers, dtype, z, out_dir = sys.argv[2:8]
        worker(int(h), int(i), int(n_layers), dtype, z == "1", out_dir)
    else:
        main()
