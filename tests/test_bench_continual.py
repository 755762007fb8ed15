"""benchmarks/bench_continual.py: a finished run is reused across sessions only while its
settings (parsed recipe, arm, seed) are unchanged."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def bench(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench_continual", ROOT / "benchmarks" / "bench_continual.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    recipe = tmp_path / "benchmarks" / "recipes" / "r.yaml"
    recipe.parent.mkdir(parents=True)
    recipe.write_text("# comment\nlora_r: 16\nlora_alpha: 1\n")
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    monkeypatch.setitem(mod.SEQUENCES, "t", {"recipe": "benchmarks/recipes/r.yaml", "data": False, "pairs": [],
                                             "paper": {}})
    return mod, recipe


def test_summary_is_reused_only_with_the_same_settings(bench, tmp_path):
    mod, recipe = bench
    results = tmp_path / "results"
    path = mod.summary_path(results, "t", "lora_ga", 0)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"R": [[0.5]], "bench_settings": mod.settings("t", "lora_ga", 0)}))
    assert mod.finished_summary(results, "t", "lora_ga", 0) is not None
    # launch() does not start a process for it
    assert mod.launch("t", "lora_ga", 0, tmp_path / "runs", results)["reused"]
    recipe.write_text("# another comment\nlora_r: 16\nlora_alpha: 1\n")  # comments do not matter
    assert mod.finished_summary(results, "t", "lora_ga", 0) is not None
    assert mod.finished_summary(results, "t", "lora_ga", 1) is None  # another seed: no summary
    recipe.write_text("lora_r: 16\nlora_alpha: 2\n")  # the content does
    assert mod.finished_summary(results, "t", "lora_ga", 0) is None
    assert mod.settings("t", "lora_ga", 0)["overrides"] != mod.settings("t", "vanilla", 0)["overrides"]


@pytest.mark.parametrize("recipe", ["recipes/quickstart.yaml", "benchmarks/recipes/ni_seq_opp1_paper_op.yaml"])
def test_shipped_small_recipes_run_at_the_papers_relative_magnitude(recipe):
    """s * sqrt(ln r / ln m) of SmolLM2's narrowest target (k/v: 576 -> 192) stays within twice the
    paper's 0.19, so the trainer's warning stays silent for them."""
    import math

    import yaml

    from slice_trl.initializers import FAR_ABOVE, PAPER_RELATIVE_MAGNITUDE

    raw = yaml.safe_load((ROOT / recipe).read_text())
    r, alpha = raw["lora_r"], raw["lora_alpha"]
    s = alpha / math.sqrt(r) if raw.get("use_rslora") else alpha / r
    assert s == pytest.approx(0.25)
    assert s * math.sqrt(math.log(r) / math.log(192)) < FAR_ABOVE * PAPER_RELATIVE_MAGNITUDE


def test_reference_check_reports_the_largest_R_difference(bench, tmp_path):
    mod, _ = bench
    new, ref = tmp_path / "new", tmp_path / "ref"
    run = {"seed": 0, "R": [[0.5, None], [0.25, 0.75]], "AP": 0.625, "FP": 0.5, "forgetting": 0.125}
    moved = {**run, "R": [[0.5, None], [0.125, 0.75]], "FP": 0.4375, "forgetting": 0.1875}
    for folder, r in ((new, moved), (ref, run)):
        folder.mkdir()
        (folder / "continual_t.json").write_text(json.dumps(
            {"runs": {"lora_ga": [r]}, "summary": {"lora_ga": {"FP": [50.0, 3.0]}}}))
    text = mod.compare("t", new, ref)
    # |0.125 - 0.25| = 0.125 -> 12.50 x100; FP -6.25, forgetting +6.25
    assert "| lora_ga | 0 | 12.50 | +0.00 | -6.25 | +6.25 | 3.0 |" in text
    assert (new / "continual_t_rerun_check.md").read_text() == text
