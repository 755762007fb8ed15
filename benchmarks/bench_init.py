"""Benchmark of SLICE initialisation on SmolLM2-135M-Instruct (CPU), issue 2.

Setting: NI-Seq-Opposite-2's first three tasks from ``../shared/data/superni``: two earlier tasks
(task088, task1510) and the current one (task181). S_cur = S_prev = 8 mini-batches of 8 examples
fitted to ~128 tokens (Super-NI prompt: Definition, blank line, "Input: " + input, as the user
turn; completion = first output; the definition is cut to fit the budget, the completion never),
so G_prev averages 16 batches (8 per earlier task, "each_task") and G_cur 8.
LoRA: rsLoRA, alpha = 2 (the paper), r = 16 (the recipes' default; --r 64 for the paper's rank), q/k/v/o/gate/up/down.

Every configuration runs in a FRESH subprocess (peak RSS is per process):

1. imports + data preparation, 2. load the model (fp32) and wrap it with PEFT, 3. measure RSS
("model" memory = RSS after loading, libraries and data included), 4. reset the peak RSS
(``/proc/self/clear_refs`` = 5, so VmHWM restarts at the current RSS), 5. run the initialiser,
6. read VmHWM (kernel-tracked peak resident set, exact; a sampling thread could miss short peaks,
tracemalloc does not see torch's allocations).

Times come from the initialiser's own report (``grad_prev``, ``grad_cur``, ``surgery``,
``svd_rescale``, ``absorb``) plus the wall time of the whole call; "overhead" = wall time minus
the two gradient passes, so it includes every non-pass cost (finite checks, rank checks, ...).

The subspace agreement of the bf16-G_prev init with the fp32 one is measured on the saved
factors: per module, the mean cosine of the principal angles between the column spaces of B
(and between the row spaces of A), averaged over modules. With the paper's global gate the
projection only acts when the whole-model cosine is negative; on the base model it is positive
(docs/method.md), so the per-module mode is benchmarked too, where the projection acts in the
modules whose own cosine is negative.

Usage: python benchmarks/bench_init.py [--threads N] [--r R] [--configs ...] [--quick]
       (writes benchmarks/results/init_benchmark.{json,md}; --render rewrites the .md from the .json)
On a CPU shared with other jobs, pass --threads 1: OpenMP teams spin-wait at barriers, and with
more threads than free cores every small BLAS/LAPACK call (the per-module SVDs above all) becomes
10-50x slower, which measures the neighbours rather than the library.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data" / "superni"
RESULTS = Path(__file__).resolve().parent / "results"
PREV_TASKS = ("task088_identify_typo_verification", "task1510_evalution_relation_extraction")
CUR_TASK = "task181_outcome_extraction"
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

# Gradient checkpointing (InitConfig.activation_checkpointing) bounds the activations of the
# passes. Only "fp32_global" runs the full S = 8 per side and gives the time ratio; the other
# runs use 1 batch per side ("short": the peak does not grow with the number of batches, since
# every micro-batch frees what it allocated, and the bf16-vs-fp32 comparison needs the same
# batches in both runs, not many of them). "mmap" runs set MALLOC_MMAP_THRESHOLD_ (a glibc
# tunable) so that large blocks go back to the OS when freed: they separate live memory from
# what glibc's heap keeps after frees.
_SHORT = {"steps": 1}
CONFIGS = [
    {"name": "fp32_per_module", "prev_grad_dtype": "float32", "projection": "per_module",
     "gradient_checkpointing": True, **_SHORT},
    {"name": "bf16_per_module", "prev_grad_dtype": "bfloat16", "projection": "per_module",
     "gradient_checkpointing": True, **_SHORT},
    {"name": "fp32_global_mmap", "prev_grad_dtype": "float32", "projection": "global", "gradient_checkpointing": True,
     "malloc_mmap_threshold": 131072, **_SHORT},
    {"name": "bf16_global_mmap", "prev_grad_dtype": "bfloat16", "projection": "global", "gradient_checkpointing": True,
     "malloc_mmap_threshold": 131072, **_SHORT},
    {"name": "fp32_global_no_ckpt", "prev_grad_dtype": "float32", "projection": "global",
     "gradient_checkpointing": False, **_SHORT},
    {"name": "bf16_global", "prev_grad_dtype": "bfloat16", "projection": "global", "gradient_checkpointing": True},
    {"name": "fp32_global", "prev_grad_dtype": "float32", "projection": "global", "gradient_checkpointing": True},
]
DEFAULT_CONFIGS = ["fp32_per_module", "bf16_per_module", "fp32_global_mmap", "bf16_global_mmap",
                   "fp32_global_no_ckpt", "fp32_global"]
PAIRS = [("fp32_global", "bf16_global"), ("fp32_per_module", "bf16_per_module")]

OVERHEAD_TARGET = 0.15
MEM_TARGET = {"float32": 2.2, "bfloat16": 1.7}


# ---------------------------------------------------------------------------------------------
# memory probes (Linux)
# ---------------------------------------------------------------------------------------------

def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kb("VmHWM") * 1024


def reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------

def superni_examples(task: str, tokenizer, max_length: int, n: int) -> list[dict]:
    """Up to ``n`` conversational prompt/completion records of at most ``max_length`` tokens:
    the definition is cut (from the end, on a token boundary) to fill what input + completion
    leave; records whose input + completion alone do not fit are skipped."""
    with open(DATA / f"{task}.json") as fh:
        raw = json.load(fh)
    definition = raw["Definition"][0].strip()
    def_ids = tokenizer(definition, add_special_tokens=False)["input_ids"]

    def record(defn: str, inp: str, out: str) -> dict:
        prompt = (defn + "\n\n" if defn else "") + "Input: " + inp
        return {"prompt": [{"role": "user", "content": prompt}], "completion": [{"role": "assistant", "content": out}]}

    def length(rec: dict) -> int:
        return len(tokenizer.apply_chat_template(rec["prompt"] + rec["completion"], tokenize=True,
                                                 return_dict=True)["input_ids"])

    out = []
    for inst in raw["Instances"]:
        if len(out) >= n:
            break
        inp, ans = inst["input"].strip(), inst["output"][0].strip()
        if not ans:
            continue
        bare = length(record("", inp, ans))
        room = max_length - bare - 4  # the blank line and a safety margin
        if room < 8:
            continue
        keep = min(len(def_ids), room)
        while keep > 0:
            rec = record(tokenizer.decode(def_ids[:keep]).strip(), inp, ans)
            if length(rec) <= max_length:
                break
            keep -= 4
        else:
            continue
        out.append(rec)
    if len(out) < n:
        raise RuntimeError(f"{task}: only {len(out)} of {n} examples fit {max_length} tokens")
    return out


def task_batches(task: str, tokenizer, n_batches: int, batch_size: int, max_length: int, seed: int) -> list[dict]:
    from datasets import Dataset

    from slice_trl.trainer.batching import default_collator, prepare_sft_dataset, sample_batches

    rows = superni_examples(task, tokenizer, max_length, n_batches * batch_size)
    prepared = prepare_sft_dataset(Dataset.from_list(rows), tokenizer, max_length=max_length)
    return sample_batches(prepared, default_collator(tokenizer), batch_size, n_batches, seed)


# ---------------------------------------------------------------------------------------------
# one configuration, in a fresh process
# ---------------------------------------------------------------------------------------------

def worker(cfg: dict, out_json: Path, out_factors: Path) -> None:
    import datasets
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    from slice_trl.configs.config import InitConfig
    from slice_trl.initializers import SliceInitializer
    from slice_trl.models.gradients import target_weights
    from slice_trl.models.loading import EMBEDDED_MODEL, load_model_and_tokenizer, resolve_model_path

    datasets.disable_progress_bars()
    hf_logging.set_verbosity_error()
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    rss_start = rss_bytes()

    # data first, so its memory is part of the baseline and not of the initialiser's peak
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(EMBEDDED_MODEL))
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    prev_batches = []
    for k, task in enumerate(PREV_TASKS):
        prev_batches += task_batches(task, tokenizer, cfg["steps"], cfg["batch_size"], cfg["max_length"], seed=100 + k)
    cur_batches = task_batches(CUR_TASK, tokenizer, cfg["steps"], cfg["batch_size"], cfg["max_length"], seed=7)
    rss_data = rss_bytes()

    model, _ = load_model_and_tokenizer(EMBEDDED_MODEL, dtype="float32")
    rss_model_lazy = rss_bytes()
    # safetensors loads lazily (mmap): the weights become resident only when first read, which
    # would otherwise be charged to the initialiser. Read every parameter once.
    with torch.no_grad():
        for p in model.parameters():
            float(p.sum())
    rss_model_only = rss_bytes()
    lora = LoraConfig(r=cfg["r"], lora_alpha=cfg["alpha"], use_rslora=True, lora_dropout=0.0,
                      target_modules=TARGETS, bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    import gc

    gc.collect()
    rss_model = rss_bytes()
    weights = target_weights(model, adapter_name="default")
    target_fp32_bytes = sum(w.numel() for w in weights.values()) * 4
    model_param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    del weights

    init_cfg = InitConfig(method="slice", c=1.0, projection=cfg["projection"], cur_steps=cfg["steps"],
                          prev_steps=cfg["steps"], batch_size=cfg["batch_size"],
                          micro_batch_size=cfg["micro_batch_size"], prev_grad_dtype=cfg["prev_grad_dtype"],
                          prev_grad_device="cpu", activation_checkpointing=cfg["gradient_checkpointing"], seed=42)
    initializer = SliceInitializer(init_cfg)
    peak_reset = reset_peak_rss()
    t0 = time.perf_counter()
    report = initializer(model, "default", cur_batches, prev_batches)
    wall = time.perf_counter() - t0
    peak = peak_rss_bytes()

    factors = {}
    for name, module in model.named_modules():
        if hasattr(module, "lora_A") and "default" in getattr(module, "lora_A", {}):
            factors[name] = (module.lora_B["default"].weight.detach().clone(),
                             module.lora_A["default"].weight.detach().clone())
    torch.save(factors, out_factors)

    t = report.timings
    passes = t.get("grad_prev", 0.0) + t.get("grad_cur", 0.0)
    tokens = lambda bs: sum(int(b["attention_mask"].sum()) for b in bs)  # noqa: E731
    result = {
        "config": cfg,
        "torch_threads": torch.get_num_threads(),
        "n_batches_prev": report.n_batches_prev,
        "n_batches_cur": report.n_batches_cur,
        "batch_shapes_cur": sorted({tuple(b["input_ids"].shape) for b in cur_batches}),
        "batch_shapes_prev": sorted({tuple(b["input_ids"].shape) for b in prev_batches}),
        "tokens_prev": tokens(prev_batches),
        "tokens_cur": tokens(cur_batches),
        "timings_s": t,
        "wall_s": wall,
        "passes_s": passes,
        "micro_batches": (report.n_batches_prev + report.n_batches_cur) * math.ceil(cfg["batch_size"] / cfg["micro_batch_size"]),
        "passes_s_per_batch": passes / max(1, report.n_batches_prev + report.n_batches_cur),
        "overhead_s": wall - passes,
        "overhead_fraction": (wall - passes) / passes,
        "overhead_parts_s": {k: t.get(k, 0.0) for k in ("surgery", "svd_rescale", "absorb")},
        "surgery": report.surgery,
        "fallbacks": report.fallbacks,
        "memory": {
            "rss_start_bytes": rss_start,
            "rss_after_data_bytes": rss_data,
            "rss_after_model_load_lazy_bytes": rss_model_lazy,
            "rss_after_model_load_bytes": rss_model_only,
            "model_bytes": rss_model,  # "model" memory: RSS after loading (+ PEFT wrap)
            "model_param_bytes": model_param_bytes,
            "target_weights_fp32_bytes": target_fp32_bytes,
            "peak_rss_bytes": peak,
            "peak_reset_ok": peak_reset,
            "peak_above_model_bytes": peak - rss_model,
            "peak_above_model_x_targets": (peak - rss_model) / target_fp32_bytes,
        },
    }
    out_json.write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------
# driver
# ---------------------------------------------------------------------------------------------

def svd_probe(r: int, threads: int | None) -> dict:
    """Seconds of stage 3 + 4 (LoRA-GA slicing by randomised SVD, beta) for SmolLM2's 30 x 7 target
    shapes at rank ``r``, on random gradients and weights: the part of the overhead that grows
    with r (the passes do not depend on it)."""
    import torch

    from slice_trl.kernels.decompose import lora_ga_slices, module_seed, variance_matched_beta

    if threads:
        torch.set_num_threads(threads)
    shapes = {"q_proj": (576, 576), "k_proj": (192, 576), "v_proj": (192, 576), "o_proj": (576, 576),
              "gate_proj": (1536, 576), "up_proj": (1536, 576), "down_proj": (576, 1536)}
    gen = torch.Generator().manual_seed(0)
    total = 0.0
    for layer in range(30):
        for name, shape in shapes.items():
            g = torch.randn(shape, generator=gen)
            w = 0.02 * torch.randn(shape, generator=gen)
            t0 = time.perf_counter()
            phi_b, phi_a = lora_ga_slices(g, r, 4, 4, seed=module_seed(42, f"{layer}.{name}"))
            variance_matched_beta(w, phi_b, phi_a)
            total += time.perf_counter() - t0
    return {"r": r, "modules": 210, "svd_rescale_s": total, "threads": threads, "load_average_1min": os.getloadavg()[0]}


def subspace_cosine(x, y, rows: bool) -> float:
    """Mean cosine of the principal angles between the column spaces (rows=False) or row spaces
    (rows=True) of x and y."""
    import torch

    if rows:
        x, y = x.T, y.T
    qx, _ = torch.linalg.qr(x.double())
    qy, _ = torch.linalg.qr(y.double())
    return float(torch.linalg.svdvals(qx.T @ qy).clamp(max=1.0).mean())


def compare(f_ref: Path, f_other: Path) -> dict:
    import torch

    ref, other = torch.load(f_ref), torch.load(f_other)
    cos_b, cos_a, identical = [], [], 0
    for name, (b, a) in ref.items():
        b2, a2 = other[name]
        identical += int(torch.equal(b, b2) and torch.equal(a, a2))
        cos_b.append(subspace_cosine(b, b2, rows=False))
        cos_a.append(subspace_cosine(a, a2, rows=True))
    return {
        "modules": len(ref),
        "modules_bitwise_identical": identical,
        "mean_cos_B_colspace": sum(cos_b) / len(cos_b),
        "mean_cos_A_rowspace": sum(cos_a) / len(cos_a),
        "min_cos_B_colspace": min(cos_b),
        "min_cos_A_rowspace": min(cos_a),
        "subspace_cosine": 0.5 * (sum(cos_b) + sum(cos_a)) / len(cos_b),
    }


def markdown(res: dict) -> str:
    gib = lambda b: f"{b / 2**20:.0f} MiB"  # noqa: E731
    s = res["setting"]
    lines = [
        "# SLICE initialisation benchmark (SmolLM2-135M-Instruct, CPU)",
        "",
        f"Machine: {res['machine']}. Shared with other jobs: timings are noisy.",
        f"Setting: S_cur = S_prev = {s['steps']} batches of {s['batch_size']} x <= {s['max_length']} tokens, "
        f"two earlier tasks ({', '.join(PREV_TASKS)}) -> {CUR_TASK}; rsLoRA r = {s['r']}, alpha = {s['alpha']}, "
        f"7 projections x 30 layers; micro_batch_size = {s['micro_batch_size']}; c = 1; prev_grad_device = cpu; "
        f"torch threads = {s.get('threads') or 'default'}.",
        "Config names: fp32/bf16 = prev_grad_dtype; global/per_module = projection; gradient checkpointing on "
        "unless 'no_ckpt'; 'mmap' = MALLOC_MMAP_THRESHOLD_=131072 (see the notes).",
        "",
        "| config | batches prev/cur | G_prev s | G_cur s | surgery s | SVD+rescale s | absorb s | overhead / passes | "
        "model RSS | peak - model | x targets (fp32) | target | surgery log |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in res["runs"]:
        if "error" in r:
            lines.append(f"| {r['config']['name']} | failed: {r['error'][:80]} |")
            continue
        t, m, cfg = r["timings_s"], r["memory"], r["config"]
        ratio = (f"n/a (short run: {r['overhead_fraction']:.1%})" if cfg.get("memory_only") else
                 f"{r['overhead_fraction']:.1%} ({'ok' if r['overhead_fraction'] <= OVERHEAD_TARGET else 'MISSED'})")
        tgt = MEM_TARGET[cfg["prev_grad_dtype"]]
        sg = r["surgery"] or {}
        log = (f"cos {sg.get('cosine', float('nan')):+.3f}, fired {sg.get('fired')}, "
               f"neg. modules {sg.get('frac_negative_modules', 0):.0%}")
        lines.append(
            f"| {cfg['name']} | {r['n_batches_prev']}/{r['n_batches_cur']} | {t.get('grad_prev', 0):.1f} | {t['grad_cur']:.1f} | {t['surgery']:.2f} | "
            f"{t['svd_rescale']:.2f} | {t['absorb']:.2f} | {ratio} | {gib(m['model_bytes'])} | "
            f"{gib(m['peak_above_model_bytes'])} | {m['peak_above_model_x_targets']:.2f} | <= {tgt} "
            f"({'ok' if m['peak_above_model_x_targets'] <= tgt else 'MISSED'}) | {log} |"
        )
    lines += ["", "Target weights (fp32): " + gib(res["target_weights_fp32_bytes"]) + "; overhead target <= "
              f"{OVERHEAD_TARGET:.0%} of the passes (G_prev + G_cur).", "",
              "bf16 G_prev vs fp32 G_prev (subspace cosine = mean over modules of the mean principal-angle cosine, "
              "B column spaces and A row spaces; target >= 0.99):", ""]
    for c in res["comparisons"]:
        if "error" in c:
            lines.append(f"- {c['pair']}: failed: {c['error']}")
            continue
        lines.append(
            f"- {c['pair'][0]} vs {c['pair'][1]}: B {c['mean_cos_B_colspace']:.5f} (min {c['min_cos_B_colspace']:.5f}), "
            f"A {c['mean_cos_A_rowspace']:.5f} (min {c['min_cos_A_rowspace']:.5f}); "
            f"{c['modules_bitwise_identical']}/{c['modules']} modules bitwise identical "
            f"({'ok' if c['subspace_cosine'] >= 0.99 else 'MISSED'})"
        )
    if res.get("svd_probe"):
        lines += ["", "Stage 3 + 4 alone at other ranks (the passes do not depend on r):", ""]
    for r_key, probe in sorted(res.get("svd_probe", {}).items(), key=lambda kv: int(kv[0])):
        lines.append(f"- SVD + rescale probe at r = {probe['r']}: {probe['svd_rescale_s']:.1f} s for 210 modules "
                     f"(random gradients of SmolLM2's shapes; torch threads {probe['threads'] or 'default'}).")
    if res.get("analysis"):
        lines += ["", "## Findings", ""] + [f"- {n}" for n in res["analysis"]]
    lines += ["", "Notes:", ""] + [f"- {n}" for n in res.get("notes", [])]
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 batch per side (smoke run; figures not meaningful)")
    ap.add_argument("--micro-batch-size", type=int, default=1)
    ap.add_argument("--r", type=int, default=16, help="LoRA rank (default: the recipes' lora_r = 16)")
    ap.add_argument("--configs", nargs="*", default=DEFAULT_CONFIGS, choices=[c["name"] for c in CONFIGS])
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads in each worker (default: torch's default, one per core)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--worker", type=str, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--render", action="store_true", help="only rewrite the .md from the existing .json")
    ap.add_argument("--svd-probe", type=int, default=None, metavar="R",
                    help="time only the SVD + rescale stage at rank R on SmolLM2's 210 module shapes (random "
                         "gradients; the passes do not depend on R) and add it to the existing .json")
    args = ap.parse_args()

    if args.svd_probe:
        path = args.out / "init_benchmark.json"
        res = json.loads(path.read_text())
        res.setdefault("svd_probe", {})[str(args.svd_probe)] = svd_probe(args.svd_probe, args.threads)
        path.write_text(json.dumps(res, indent=2))
        (args.out / "init_benchmark.md").write_text(markdown(res))
        print(res["svd_probe"])
        return

    if args.render:
        res = json.loads((args.out / "init_benchmark.json").read_text())
        (args.out / "init_benchmark.md").write_text(markdown(res))
        return

    if args.worker:
        spec = json.loads(args.worker)
        worker(spec["cfg"], Path(spec["json"]), Path(spec["factors"]))
        return

    setting = {"steps": 8, "batch_size": 8, "max_length": 128, "r": args.r, "alpha": 2,
               "micro_batch_size": args.micro_batch_size, "threads": args.threads}
    tmp = Path(tempfile.mkdtemp(prefix="bench_init_"))
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "init_benchmark_quick" if args.quick else "init_benchmark"
    runs, files = [], {}
    for base in CONFIGS:
        if base["name"] not in args.configs:
            continue
        cfg = {**setting, **base}
        cfg["memory_only"] = cfg["steps"] < setting["steps"]
        if args.quick:
            cfg["steps"] = 1
        spec = {"cfg": cfg, "json": str(tmp / f"{base['name']}.json"), "factors": str(tmp / f"{base['name']}.pt")}
        env = dict(os.environ)
        if cfg.get("malloc_mmap_threshold"):
            env["MALLOC_MMAP_THRESHOLD_"] = str(cfg["malloc_mmap_threshold"])
        print(f"[bench_init] {base['name']} ...", flush=True)
        t0 = time.perf_counter()
        load_before = os.getloadavg()
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], cwd=ROOT,
                              capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            runs.append({"config": cfg, "error": proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed"})
            continue
        r = json.loads(Path(spec["json"]).read_text())
        r["process_wall_s"] = time.perf_counter() - t0
        r["load_average_1min_before_after"] = [load_before[0], os.getloadavg()[0]]
        runs.append(r)
        files[base["name"]] = Path(spec["factors"])
        print(f"[bench_init] {base['name']}: passes {r['passes_s']:.1f} s, overhead {r['overhead_fraction']:.1%}, "
              f"peak-model {r['memory']['peak_above_model_x_targets']:.2f} x targets", flush=True)
        write_results(args, setting, runs, files, stem, final=False)
    write_results(args, setting, runs, files, stem, final=True)


def write_results(args, setting, runs, files, stem, final: bool) -> None:
    comparisons = []
    for a, b in PAIRS:
        if a in files and b in files:
            try:
                comparisons.append({"pair": [a, b], **compare(files[a], files[b])})
            except Exception as err:  # noqa: BLE001 - reported, not hidden
                comparisons.append({"pair": [a, b], "error": repr(err)})
    ok = [r for r in runs if "error" not in r]
    notes = [
        '"model" memory = RSS after imports, data preparation, loading the fp32 model (every weight read once: '
        "safetensors maps the file lazily) and wrapping it with PEFT; the peak is VmHWM after resetting it there.",
        "prev_grad_device = cpu is the model's device on this machine, so it changes nothing here.",
        "overhead = wall time of the initialiser call minus the two gradient passes; only full runs (S = 8) count "
        "for it. Short runs (steps = 1) use 1 batch per earlier task and 1 current batch.",
    ]
    res = {
        "benchmark": "SLICE initialisation, SmolLM2-135M-Instruct",
        "machine": f"{platform.machine()} {os.cpu_count()} CPU cores, Linux, torch threads "
                   f"{ok[0]['torch_threads'] if ok else '?'}",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "complete": final,
        "quick": args.quick,
        "setting": setting,
        "targets": {"overhead_fraction_max": OVERHEAD_TARGET, "peak_above_model_x_targets_max": MEM_TARGET,
                    "bf16_subspace_cosine_min": 0.99},
        "target_weights_fp32_bytes": ok[0]["memory"]["target_weights_fp32_bytes"] if ok else None,
        "runs": runs,
        "comparisons": comparisons,
        "notes": notes,
    }
    (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2))
    (args.out / f"{stem}.md").write_text(markdown(res))
    if final:
        print(markdown(res))


if __name__ == "__main__":
    main()
