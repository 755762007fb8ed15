"""benchmarks/bench_gate_stability.py on a tiny 3-task SLICE run: the rebuilt model state gives the
run's own recorded cosines back (and would not without re-applying the earlier stages), redraws
move the cosine, flips are counted against the run's decision, and a rerun resumes from the cache."""

import importlib.util
import json
import statistics
from pathlib import Path

import pytest

from slice_trl.cli import recipe as recipe_mod
from slice_trl import run as run_mod
from slice_trl.utils.testing import tiny_llama, tiny_recipe_yaml, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("one_torch_thread", "restore_root_logger")

THREE_TASKS = """\
tasks:
  - {name: first, source: builtin, max_train: 16, max_eval: 4}
  - {name: last, source: builtin, max_train: 16, max_eval: 4}
  - {name: second, source: builtin, max_train: 16, max_eval: 4}
init: {method: slice, c: 1.0, cur_steps: 1, prev_steps: 1, prev_batching: each_task, batch_size: 4,
       micro_batch_size: 4}
"""


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_gate_stability", ROOT / "benchmarks" / "bench_gate_stability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("gate")
    base = root / "tiny-llama"
    tiny_llama(seed=3).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    text = tiny_recipe_yaml(base, root / "run", learning_rate="5.0e-2")
    text = text[:text.index("tasks:")] + THREE_TASKS + text[text.index("evaluation:"):]  # 3 tasks, each_task probe
    (root / "r.yaml").write_text(text)
    run_mod.run(recipe_mod.load_recipe(root / "r.yaml"))
    return root


def test_redraws_of_a_finished_run(bench, tiny_run, tmp_path, monkeypatch):
    run_dir = tiny_run / "run"
    recorded = {t: json.loads(next((run_dir / "stages").glob(f"0{t}-*/record.json")).read_text())["init"]["surgery"]
                for t in (2, 3)}
    args = [str(run_dir), "--draws", "3", "--results-dir", str(tmp_path), "--cache", str(tmp_path / "cache")]
    assert bench.main(args) == 0
    out = json.loads((tmp_path / "gate_stability.json").read_text())
    assert out["complete"] and [r["stage"] for r in out["stages"]] == [2, 3]
    for row in out["stages"]:
        rec = recorded[row["stage"]]
        # draw 0 (the run's seeds, on the rebuilt state) gives the run's own cosine back
        assert row["recorded_cosine"] == rec["cosine"]
        assert row["own_draw_cosine"] == pytest.approx(rec["cosine"], rel=1e-5, abs=1e-7)
        cosines = row["redraw_cosines"]
        assert len(cosines) == 3 and all(abs(c - rec["cosine"]) > 1e-6 for c in cosines)  # other probes, other G
        assert row["flips"] == sum((c < 0) != (rec["cosine"] < 0) for c in cosines)  # recounted here
        assert row["mean"] == pytest.approx(statistics.fmean(cosines))
        assert row["sd"] == pytest.approx(statistics.stdev(cosines))
        assert row["min"] == min(cosines) and row["max"] == max(cosines)
    # each_task: one batch of 4 per earlier task (stage 3: two earlier tasks)
    assert out["stages"][1]["probe_examples"]["prev_examples"] == [4, 4]
    assert out["stages"][1]["probe_examples"]["prev_batches"] == 2
    md = (tmp_path / "gate_stability.md").read_text()
    assert "PARTIAL" not in md and "| 3 | 8 |" in md

    # a rerun resumes: every (stage, draw) comes from the cache, nothing is probed again
    cached = {p: p.stat().st_mtime_ns for p in (tmp_path / "cache").glob("stage*_draw*.json")}
    assert len(cached) == 2 * 4
    def no_probe(*args, **kwargs):
        raise AssertionError("probed again although the cache has every draw")

    monkeypatch.setattr(bench, "probe", no_probe)
    assert bench.main(args) == 0
    assert {p: p.stat().st_mtime_ns for p in cached} == cached
    assert json.loads((tmp_path / "gate_stability.json").read_text())["stages"] == out["stages"]


def test_the_check_needs_the_earlier_stages_merged(bench, tiny_run, tmp_path, monkeypatch):
    """Without re-applying stages 1..t-1 the probe sees another model: draw 0 no longer matches."""
    spec = importlib.util.spec_from_file_location("bench_gate_stability_2", ROOT / "benchmarks" / "bench_gate_stability.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    from slice_trl.trainer import stages

    monkeypatch.setattr(stages, "reapply_stage", lambda model, *a, **k: model)
    run_dir = tiny_run / "run"
    assert mod.main([str(run_dir), "--draws", "0", "--results-dir", str(tmp_path), "--cache", str(tmp_path / "c")]) == 0
    rows = json.loads((tmp_path / "gate_stability.json").read_text())["stages"]
    assert any(abs(r["own_draw_cosine"] - r["recorded_cosine"]) > 1e-3 for r in rows)


def test_an_unfinished_run_gives_a_partial_report(bench, tiny_run, tmp_path):
    """Stages 2 and 3 not finished (no record.json): stage 2 is probed on stage 1's model, its
    recorded cosine and flips are unknown, stage 3 waits; --only-draws computes only the draws
    named; the report says PARTIAL."""
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_run / "run", run_dir)
    for record in sorted((run_dir / "stages").glob("*/record.json"))[1:]:
        record.unlink()
    args = [str(run_dir), "--draws", "2", "--results-dir", str(tmp_path), "--cache", str(tmp_path / "c")]
    assert bench.main([*args, "--only-draws", "1"]) == 0  # this pass: redraw 1 only
    out = json.loads((tmp_path / "gate_stability.json").read_text())
    assert not out["complete"] and [r["stage"] for r in out["stages"]] == [2]
    row = out["stages"][0]
    assert row["recorded_cosine"] is None and row["flips"] is None
    assert row["own_draw_cosine"] is None and row["n_redraws"] == 1
    assert sorted(p.name for p in (tmp_path / "c").glob("stage*.json")) == ["stage2_draw1.json"]
    assert "PARTIAL" in (tmp_path / "gate_stability.md").read_text()
