"""benchmarks/bench_layer_trace.py's counting rules on a two-module package written here, whose calls
are known by construction: entries, upward calls, calls through a library frame, import time left out."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_layer_trace", ROOT / "benchmarks" / "bench_layer_trace.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_tracer_counts_entries_upward_calls_and_library_hops(tmp_path, monkeypatch):
    bench = _bench()
    pkg = tmp_path / "toy"
    (pkg / "low").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "low" / "__init__.py").write_text(
        "import contextlib\n"
        "def twice(f):\n    return f() + f()\n"          # runs a higher layer's function: 2 upward calls
        "@contextlib.contextmanager\n"
        "def held():\n    yield 1\n"                      # entered through contextlib's frames
        "def plain():\n    return helper()\n"
        "def helper():\n    return 0\n")                  # same-module call: no entry
    (pkg / "high.py").write_text(
        "from toy import low\n"
        "low.plain()\n"                                   # import time: not counted
        "def one():\n    return 1\n"
        "def go():\n    with low.held():\n        pass\n    return low.twice(one) + low.plain()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("toy", "toy.low", "toy.high"):
        sys.modules.pop(name, None)
    tracer = bench.CallTracer(pkg)
    sys.setprofile(tracer)
    try:
        import toy.high

        assert toy.high.go() == 2
    finally:
        sys.setprofile(None)
    # high -> low: held (entered once, resumed once at exit), twice, plain; low -> high: one, one
    assert dict(tracer.edges) == {("high", "low"): 4, ("low", "high"): 2, ("<outside>", "high"): 1}
    assert dict(tracer.via_library) == {"low": 2}  # the generator's start and its resumption, by contextlib
    layers = [("low", {"low"}), ("high", {"high"})]
    result = bench.summarise(tracer, layers, "abc", 0.0)
    assert result["entries"] == {"high": 3, "low": 4} and result["upward"] == {"low -> high": 2}
    assert result["upward_by_layer"] == {"low -> high": 2} and result["entries_via_library_total"] == 2
