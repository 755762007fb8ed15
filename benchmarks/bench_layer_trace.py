"""A recipe's trip through the layers: how often control enters each slice_trl module from another
one, and how often it climbs back up a layer (issue 26: "a trace of run(recipe) enters trainer.py
12 times and returns 52 times to modules it left").

What runs: the 2-task SLICE recipe of the tests (`tiny_recipe_yaml`: a tiny random Llama saved to a
temp dir, built-in tasks, CPU) with ``max_steps: 1`` (one optimizer step per task), in this process
through ``slice_trl.run.main([recipe])`` - the command a user types - under ``sys.setprofile``.

Definitions (a "call" is a profiler ``call`` event: a Python function starting, or a generator
resuming; a module is a file of the package, "tasks" for tasks/__init__.py, "" for the package's
own __init__.py):
- the caller of a call into slice_trl module Y is the module X of the NEAREST slice_trl frame
  above it on the stack (frames of torch, transformers, TRL, PEFT in between are skipped: a
  callback that TRL's loop makes into slice_trl counts as made by the slice_trl code that
  started that loop); "<outside>" if there is none (the call of ``main`` itself);
- entries(Y) = calls into Y whose caller X is a different module (X != Y); "via a library" counts
  those of them whose immediate caller frame is outside slice_trl (X handed Y's function or
  generator to other code - torch, transformers, TRL, PEFT, or the standard library's contextlib
  for a context manager - which called it);
- an upward call is an entry X -> Y with layer(Y) > layer(X): control that went down the layers
  and comes back up (a hook, callback or closure of a higher layer run by a lower one, or a
  lower module importing a higher one lazily and calling it). Counted per (X -> Y);
- layers are those of the tree's own tests/test_layout.py (``LAYERS``; a module is in a layer if
  its name or its first component is listed), so the script measures any tree by that tree's rules;
- import-time work is left out: every module of the package is imported before the trace starts,
  and a module body (``<module>``) and calls made directly from one are not counted.

Results: benchmarks/results/layer_trace.{json,md}; each run is a column ("after" by default,
``--column before`` for a pre-refactor tree), stored with the tree's commit, merged into the
files that are there. To measure another checkout, copy this script into it and run it there with
``PYTHONPATH=<that checkout>`` and ``--results`` pointing at the results folder to merge into.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python benchmarks/bench_layer_trace.py [--column after]
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUTSIDE = "<outside>"


def layer_rules(root: Path) -> list[tuple[str, set[str]]]:
    """The tree's LAYERS, read from its own tests/test_layout.py."""
    spec = importlib.util.spec_from_file_location("_layout_rules", root / "tests" / "test_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.LAYERS


def layer_of(module: str, layers: list[tuple[str, set[str]]]) -> int | None:
    for i, (_, members) in enumerate(layers):
        if module in members or module.split(".")[0] in members:
            return i
    return None


class CallTracer:
    """``sys.setprofile`` hook counting calls between the modules of one package directory."""

    def __init__(self, package_dir: Path):
        self.prefix = str(package_dir) + os.sep
        self.module_by_code: dict = {}  # code object -> module name, or None outside the package
        self.edges: collections.Counter = collections.Counter()  # (caller, callee) -> calls
        self.via_library: collections.Counter = collections.Counter()  # callee -> entries through library frames
        self.calls_in_package = 0

    def module_of(self, code) -> str | None:
        name = self.module_by_code.get(code, False)
        if name is False:
            name = None
            if code.co_filename.startswith(self.prefix):
                parts = list(Path(code.co_filename[len(self.prefix):]).with_suffix("").parts)
                name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            self.module_by_code[code] = name
        return name

    def __call__(self, frame, event, arg):
        if event != "call":  # c_call, return, ...: only Python calls move control between modules
            return
        code = frame.f_code
        callee = self.module_of(code)
        if callee is None or code.co_name == "<module>":
            return
        self.calls_in_package += 1
        up = frame.f_back
        while up is not None:  # the nearest slice_trl frame above: the caller
            caller = self.module_of(up.f_code)
            if caller is not None:
                if up.f_code.co_name == "<module>":
                    return  # import time
                if caller != callee:
                    self.edges[(caller, callee)] += 1
                    if up is not frame.f_back:
                        self.via_library[callee] += 1
                return
            up = up.f_back
        self.edges[(OUTSIDE, callee)] += 1


def import_all(package_dir: Path) -> None:
    """Import every module of the package now (those that import), so that the lazy imports inside
    the run find them loaded and import time stays out of the trace."""
    import importlib
    import pkgutil

    for info in pkgutil.walk_packages([str(package_dir)], prefix="slice_trl."):
        try:
            importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - an optional dependency missing: the run does not use it either
            pass


def run_traced(package_dir: Path) -> tuple[CallTracer, float]:
    """The tiny 2-task recipe through ``slice_trl.run.main`` under the tracer. Returns (tracer, seconds)."""
    import threading

    import torch

    try:
        from slice_trl.utils.testing import tiny_llama, tiny_recipe_yaml, tiny_tokenizer
    except ImportError:  # the flat layout before issue 26
        from slice_trl.testing import tiny_llama, tiny_recipe_yaml, tiny_tokenizer
    from slice_trl import run as run_mod

    import_all(package_dir)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "tiny-llama"
        tiny_llama(seed=3).save_pretrained(base)
        tiny_tokenizer().save_pretrained(base)
        recipe = Path(tmp) / "tiny.yaml"
        recipe.write_text(tiny_recipe_yaml(base, Path(tmp) / "run", extra="max_steps: 1\n"))
        tracer = CallTracer(package_dir)
        start = time.perf_counter()
        threading.setprofile(tracer)
        sys.setprofile(tracer)
        try:
            code = run_mod.main([str(recipe)])
        finally:
            sys.setprofile(None)
            threading.setprofile(None)
        seconds = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"the traced run failed (exit code {code})")
    return tracer, seconds


def summarise(tracer: CallTracer, layers, commit: str, seconds: float) -> dict:
    names = [name for name, _ in layers]
    entries: collections.Counter = collections.Counter()
    upward: dict[str, int] = {}
    entries_by_layer: collections.Counter = collections.Counter()
    for (caller, callee), n in tracer.edges.items():
        entries[callee] += n
        entries_by_layer[names[layer_of(callee, layers)]] += n
        if caller != OUTSIDE and layer_of(callee, layers) > layer_of(caller, layers):
            upward[f"{caller} -> {callee}"] = n
    upward_by_layer: collections.Counter = collections.Counter()
    for edge, n in upward.items():
        caller, callee = edge.split(" -> ")
        upward_by_layer[f"{names[layer_of(caller, layers)]} -> {names[layer_of(callee, layers)]}"] += n
    return {
        "commit": commit,
        "traced_seconds": round(seconds, 1),
        "layers": [[name, sorted(members)] for name, members in layers],
        "calls_in_package": tracer.calls_in_package,
        "entries_total": sum(entries.values()),
        "entries_via_library_total": sum(tracer.via_library.values()),
        "upward_total": sum(upward.values()),
        "entries": dict(sorted(entries.items())),
        "entries_via_library": dict(sorted(tracer.via_library.items())),
        "entries_by_layer": {name: entries_by_layer[name] for name in names},
        "upward": dict(sorted(upward.items(), key=lambda kv: (-kv[1], kv[0]))),
        "upward_by_layer": dict(sorted(upward_by_layer.items(), key=lambda kv: (-kv[1], kv[0]))),
        "edges": {f"{a} -> {b}": n for (a, b), n in sorted(tracer.edges.items())},
    }


def commit_of(root: Path) -> str:
    sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return sha + ("+uncommitted" if dirty else "")


def markdown(runs: dict) -> str:
    order = [c for c in ("before", "after") if c in runs] + sorted(set(runs) - {"before", "after"})
    head = "| | " + " | ".join(f"{c} ({runs[c]['commit']})" for c in order) + " |"
    sep = "|---|" + "---:|" * len(order)
    out = ["# A recipe's trip through the layers (benchmarks/bench_layer_trace.py)", "",
           "The tests' tiny 2-task SLICE recipe (tiny random Llama, CPU, 1 step per task) through "
           "`slice_trl.run.main` under `sys.setprofile`. **entries** = calls into a module whose nearest "
           "slice_trl caller frame is in another module; **upward calls** = entries whose callee's layer is "
           "above the caller's (layers: each tree's own tests/test_layout.py). Import time left out. Exact "
           "definitions: the script's docstring.", "", head, sep]
    for key, label in (("entries_total", "entries, all modules"),
                       ("entries_via_library_total", "of them via a library frame"), ("upward_total", "upward calls"),
                       ("calls_in_package", "calls in the package (all)"), ("traced_seconds", "traced run, s")):
        out.append(f"| {label} | " + " | ".join(str(runs[c][key]) for c in order) + " |")
    for c in order:
        trainer = {m: n for m, n in runs[c]["entries"].items() if m.split(".")[0] == "trainer"}
        up_into = sum(n for e, n in runs[c]["upward"].items() if e.split(" -> ")[1].split(".")[0] == "trainer")
        out.append("")
        out.append(f"{c}: entries into the trainer module(s) {trainer}; upward calls into them {up_into}.")
    out.append("")
    for c in order:
        out.append(f"{c}: layers " + " < ".join(name for name, _ in runs[c]["layers"]) + " (upward counts compare "
                   "only within one column: the layer lists differ between trees)")
    modules = sorted(set().union(*(runs[c]["entries"] for c in order)))
    out += ["", "## Entries per module (of them via a library frame)", "", "| module | " + " | ".join(order) + " |", sep]
    for m in modules:
        cells = [f"{runs[c]['entries'][m]} ({runs[c].get('entries_via_library', {}).get(m, 0)})"
                 if m in runs[c]["entries"] else "" for c in order]
        out.append(f"| {m or '(package)'} | " + " | ".join(cells) + " |")
    for c in order:
        out += ["", f"## {c}: per layer", "", "| layer | entries |", "|---|---:|"]
        out += [f"| {name} | {n} |" for name, n in runs[c]["entries_by_layer"].items()]
        out += ["", "| upward, layer -> layer | calls |", "|---|---:|"]
        out += [f"| {edge} | {n} |" for edge, n in runs[c]["upward_by_layer"].items()]
        out += ["", f"## {c}: upward calls per caller -> callee module", "", "| caller -> callee | calls |", "|---|---:|"]
        out += [f"| {edge} | {n} |" for edge, n in runs[c]["upward"].items()]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--column", default="after", help="the column this tree's run is stored under")
    parser.add_argument("--results", default=str(ROOT / "benchmarks" / "results"),
                        help="folder of layer_trace.json/.md (merged into if present)")
    args = parser.parse_args(argv)

    import slice_trl

    package_dir = Path(slice_trl.__file__).resolve().parent
    if package_dir.parent != ROOT:
        raise SystemExit(f"slice_trl is imported from {package_dir}, not this tree: run with PYTHONPATH={ROOT}")
    layers = layer_rules(ROOT)
    tracer, seconds = run_traced(package_dir)
    logging.getLogger().handlers.clear()
    unlayered = sorted({m for edge in tracer.edges for m in edge if m != OUTSIDE and layer_of(m, layers) is None})
    if unlayered:
        raise SystemExit(f"modules without a layer in tests/test_layout.py: {unlayered}")
    result = summarise(tracer, layers, commit_of(ROOT), seconds)

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    path = results / "layer_trace.json"
    runs = json.loads(path.read_text())["runs"] if path.exists() else {}
    runs[args.column] = result
    path.write_text(json.dumps({"script": "benchmarks/bench_layer_trace.py", "runs": runs}, indent=1) + "\n")
    (results / "layer_trace.md").write_text(markdown(runs))
    print(f"{args.column} ({result['commit']}): {result['entries_total']} entries, {result['upward_total']} upward "
          f"calls, traced run {seconds:.0f} s -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
