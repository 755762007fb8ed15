"""slice_trl.compare: arm table, paired differences by seed, gate log and plots, on hand-made
run summaries (numbers chosen so every mean, sd and difference is known by hand)."""

import json
import math

import matplotlib.image
import pytest

from slice_trl.compare import compare, constant_answers, group, load_run, main, paired
from slice_trl.utils.jsonio import predictions_path, read_summary, write_summary
from slice_trl.utils.stats import min_detectable_difference

NAMES = ["a", "b"]


def run(label, seed, R, base=None, gate=None, complete=True):
    """A run summary as `summarise_run` writes it (metrics computed here by hand from R)."""
    ap = (R[0][0] + R[1][1]) / 2
    fp = (R[1][0] + R[1][1]) / 2
    out = {"label": label, "seed": seed, "task_names": NAMES, "R": R, "complete": complete,
           "AP": ap, "FP": fp, "forgetting": ap - fp, "gate": gate or [None, None],
           "timings": [{"init": 1.0, "train": 2.0, "eval": 3.0}] * 2}
    if base is not None:
        out.update(base=base, learned=ap - (base[0] + base[1]) / 2, retained=fp - (base[0] + base[1]) / 2)
    return out


GATE = [{"mode": "global", "c": 1.0, "cosine": None, "gamma": 0.0, "fired": False, "frac_negative_modules": 0.0},
        {"mode": "global", "c": 1.0, "cosine": -0.05, "gamma": 0.2, "fired": True, "frac_negative_modules": 0.75}]


def runs():
    base = [0.5, 0.0]
    return [
        # slice: FP 0.5 (seed 0) and 0.7 (seed 1); lora_ga: FP 0.3 and 0.6 -> paired diffs +20, +10
        run("slice", 0, [[1.0, None], [0.4, 0.6]], base, GATE),
        run("slice", 1, [[1.0, None], [0.6, 0.8]], base, GATE),
        run("lora_ga", 0, [[1.0, None], [0.2, 0.4]], base),
        run("lora_ga", 1, [[1.0, None], [0.4, 0.8]], base),
        run("lora_ga", 2, [[1.0, None], [0.0, 0.0]], base, complete=False),
    ]


def test_table_pairs_and_gate_log_by_hand(tmp_path):
    out = compare(runs(), tmp_path, pairs=[("slice", "lora_ga")], reference={"paper": (27.27, 12.53)})
    fp_mean, fp_sd = out["summary"]["slice"]["FP"]
    assert fp_mean == pytest.approx(60.0) and fp_sd == pytest.approx(14.142135, rel=1e-5)  # sd of 50, 70
    assert out["summary"]["lora_ga"]["seeds"] == [0, 1]  # the incomplete seed 2 is left out
    pair = out["pairs"][0]
    assert pair["seeds"] == [0, 1] and pair["diffs"] == pytest.approx([20.0, 10.0])
    assert pair["mean"] == pytest.approx(15.0) and pair["sd"] == pytest.approx(7.0710678, rel=1e-6)
    # n = 2: t_{0.975,1} = tan(0.475 pi) = 12.7062 (Cauchy); half-width 12.7062 * 7.0711 / sqrt(2) = 63.53
    half = math.tan(0.475 * math.pi) * pair["sd"] / math.sqrt(2)
    assert pair["ci"] == pytest.approx([15.0 - half, 15.0 + half]) and half == pytest.approx(63.53, abs=0.01)
    assert pair["mdd"] == pytest.approx(min_detectable_difference(pair["sd"], 2))
    # learned = AP - mean(base) = 80 - 25 (slice seed 0: AP = (1.0 + 0.6) / 2)
    assert out["summary"]["slice"]["learned"][0] == pytest.approx(100 * ((0.8 + 0.9) / 2 - 0.25))
    text = (tmp_path / "compare.md").read_text()
    assert (f"| FP(slice) - FP(lora_ga) | [0, 1] | +20.0, +10.0 | +15.0 ± 7.1 | [-48.5, +78.5] | "
            f"{pair['mdd']:.1f} |") in text
    assert "| slice | 0 | 2 | -0.0500 | 0.2000 | yes | 75% | – |" in text
    assert "lora_ga seed 2" in text  # named as not complete
    assert out["summary"]["slice"]["gate_fired"] == [2, 2] and "gate_fired" not in out["summary"]["lora_ga"]
    assert "| 2 of 2 stages |" in text
    for name in ("R_slice.png", "R_slice_pct_base.png", "fp_vs_ap.png"):
        assert matplotlib.image.imread(tmp_path / name).shape[0] > 100
    assert json.loads((tmp_path / "compare.json").read_text())["pairs"][0]["diffs"] == pytest.approx([20.0, 10.0])


def test_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_run(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="not among the runs"):
        paired(group(runs()), "slice", "vanilla")
    dup = runs()[:2] + [run("slice", 0, [[1.0, None], [0.1, 0.1]])]
    with pytest.raises(ValueError, match="seed 0"):
        group(dup)
    assert main([str(tmp_path / "nope")]) == 2
    with pytest.raises(SystemExit):
        main(["x", "--pair", "only_one_arm"])


def test_cli_reads_summary_files_with_labels(tmp_path, capsys):
    paths = []
    for k, r in enumerate(runs()[:4]):
        path = tmp_path / f"run{k}.json"
        path.write_text(json.dumps({**r, "label": "ignored"}))
        paths.append(f"{r['label']}={path}")
    assert main([*paths, "--out", str(tmp_path / "out"), "--pair", "slice:lora_ga", "--paper-opp1"]) == 0
    assert "+15.0 ± 7.1" in capsys.readouterr().out
    one = [f"{r['label']}={p.split('=')[1]}" for r, p in zip(runs()[:4], paths) if r["seed"] == 0]
    assert main([*one, "--out", str(tmp_path / "one"), "--pair", "slice:lora_ga"]) == 0
    text = capsys.readouterr().out
    assert "| slice | 1 | 80.0 | 50.0 |" in text and "| +20.0 |" in text  # one seed: no ± 0.0


def test_pair_on_another_metric_by_hand(tmp_path):
    # forgetting = AP - FP per run (see `run`): slice 80-50 = 30 and 90-70 = 20, lora_ga 70-30 = 40 and 90-60 = 30
    out = compare(runs(), tmp_path, pairs=[("slice", "lora_ga", "forgetting")])
    pair = out["pairs"][0]
    assert pair["metric"] == "forgetting" and pair["diffs"] == pytest.approx([-10.0, -10.0])
    assert "| forgetting(slice) - forgetting(lora_ga) | [0, 1] | -10.0, -10.0 | -10.0 ± 0.0 |" in (
        tmp_path / "compare.md").read_text()
    with pytest.raises(SystemExit):
        main(["x", "--pair", "slice:lora_ga:not_a_metric"])


def _rows(refs, preds):
    return [{"i": i, "prediction": p, "reference": r, "score": float(p == r)}
            for i, (r, p) in enumerate(zip(refs, preds))]


def test_constant_answers_and_the_predictions_sidecar(tmp_path):
    """Task a: every final answer is NEG and NEG is 3 of 4 references -> share 100%, score 0.75 = the
    constant answer's score. Task b: answers x, q, q, r -> share 50%, q is no reference (prior 0).
    Task c: score 0.4 is label A's share, but the answers are mostly C: not a constant answer's score."""
    final = {"a": _rows(["POS", "NEG", "NEG", "NEG"], ["NEG"] * 4),
             "b": _rows(["x", "y", "z", "w"], ["x", " q", "q ", "r"]),
             "c": _rows(["A", "A", "B", "B", "B"], ["A", "A", "C", "C", "C"])}
    first = {"a": _rows(["POS", "NEG", "NEG", "NEG"], ["POS"] * 4)}  # stage 1: ignored (not the last stage)
    with_preds = {**runs()[0], "task_names": ["a", "b", "c"], "predictions": [first, final], "base_predictions": first}
    got = constant_answers(with_preds)
    assert got["a"] == {"mode": "NEG", "mode_share": 1.0, "mode_prior": 0.75, "at_prior": True}
    assert got["b"] == {"mode": "q", "mode_share": 0.5, "mode_prior": 0.0, "at_prior": False}
    assert got["c"] == {"mode": "C", "mode_share": 0.6, "mode_prior": 0.0, "at_prior": False}
    with_preds["task_names"] = NAMES  # compare() needs the runs' tasks to agree
    with_preds["predictions"][1] = {"a": final["a"], "b": final["b"]}
    assert constant_answers(runs()[1]) is None and constant_answers({**runs()[1], "predictions": [None, None]}) is None

    path = tmp_path / "slice_seed0.json"
    write_summary(path, with_preds)
    side = predictions_path(path)
    assert side.name == "slice_seed0.predictions.json.gz"
    assert "predictions" not in json.loads(path.read_text())  # the readable summary stays small
    first_bytes = side.read_bytes()
    write_summary(path, with_preds)
    assert side.read_bytes() == first_bytes  # no timestamp in the gzip header: same content, same bytes
    back = read_summary(path)
    assert back["predictions"] == with_preds["predictions"] and back["base_predictions"] == first
    old = tmp_path / "slice_seed1.json"
    old.write_text(json.dumps(runs()[1]))  # a summary from before predictions were kept
    out = compare([load_run(str(path)), load_run(str(old)), *runs()[2:4]], tmp_path / "out")
    text = (tmp_path / "out" / "compare.md").read_text()
    assert "| slice | 1 | 100% (1/1) | 50% (0/1) |" in text and "| lora_ga | 0 | n/a | n/a |" in text
    assert out["constant_answers"]["slice"][0]["tasks"]["a"]["at_prior"] is True
    write_summary(path, {**runs()[0], "predictions": [None, None], "base_predictions": None})
    assert not side.exists()  # a rewritten summary without predictions leaves no stale sidecar
