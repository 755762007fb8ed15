"""Sequence mining (slice_trl.mining, `python -m slice_trl.mine`): exhaustive search equals
brute force, CountSketch cosines track exact cosines of real gradients, the command runs end to
end on local natural-instructions files with a tiny model (and reuses its cache), and bad input
gets clear errors."""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from slice_trl.mining import (
    CountSketch,
    PoolError,
    best_order,
    cosine_matrix,
    iter_subset_scores,
    load_pool,
    top_subsets,
)

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------
# Exhaustive search
# ------------------------------------------------------------------------------------------

def _brute_force(pairs: np.ndarray, n: int, k: int):
    """Every n-subset scored by its mean pairwise score, sorted by (score, tuple)."""
    rows = [(float(np.mean([pairs[i, j] for i, j in itertools.combinations(s, 2)])), s)
            for s in itertools.combinations(range(len(pairs)), n)]
    rows.sort()
    return rows[:k]


def _symmetric(rng, m, integers=False):
    a = rng.integers(-2, 3, size=(m, m)).astype(float) if integers else rng.uniform(-1, 1, size=(m, m))
    c = np.triu(a, 1)
    c = c + c.T
    np.fill_diagonal(c, 1.0)
    return c


@pytest.mark.parametrize("m,n,chunk", [(9, 3, 1 << 20), (9, 4, 1 << 20), (9, 3, 5), (9, 4, 7), (8, 2, 3),
                                       (7, 7, 1), (10, 5, 11)])
def test_search_equals_brute_force(m, n, chunk):
    rng = np.random.default_rng(m * 100 + n * 10 + chunk % 7)
    pairs = _symmetric(rng, m)
    idx, means = top_subsets(pairs, n, k=20, chunk_size=chunk)
    expected = _brute_force(pairs, n, 20)
    assert [tuple(int(i) for i in s) for s in idx] == [s for _, s in expected]
    np.testing.assert_allclose(means, [v for v, _ in expected], rtol=0, atol=1e-12)


def test_search_enumerates_every_subset_once_and_breaks_ties_lexicographically():
    m, n = 9, 4
    seen = np.concatenate([idx for idx, _ in iter_subset_scores(np.zeros((m, m)), n, chunk_size=10)])
    assert [tuple(r) for r in seen.tolist()] == list(itertools.combinations(range(m), n))
    # integer pair scores: many exact ties; order must still equal brute force's (score, tuple)
    pairs = _symmetric(np.random.default_rng(3), m, integers=True)
    idx, _ = top_subsets(pairs, n, k=40, chunk_size=6)
    assert [tuple(int(i) for i in s) for s in idx] == [s for _, s in _brute_force(pairs, n, 40)]


def test_top_k_capped_at_number_of_subsets():
    idx, means = top_subsets(_symmetric(np.random.default_rng(0), 5), 4, k=100)
    assert idx.shape == (math.comb(5, 4), 4) and np.all(np.diff(means) >= 0)


def test_best_order_is_the_optimal_path():
    rng = np.random.default_rng(1)
    for n in (2, 3, 5, 6):
        c = _symmetric(rng, n)
        order, cost = best_order(c)
        costs = {p: sum(c[a, b] for a, b in zip(p, p[1:])) for p in itertools.permutations(range(n))}
        best = min(costs.values())
        assert cost == pytest.approx(best, abs=1e-12)
        assert tuple(order) == min(p for p, v in costs.items() if v <= best + 1e-12)  # lexicographic tie-break


# ------------------------------------------------------------------------------------------
# CountSketch
# ------------------------------------------------------------------------------------------

def test_countsketch_rejects_bad_k_and_is_order_independent():
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="sketch_size"):
            CountSketch(bad)
    g = {"a.q_proj": torch.randn(4, 3), "b.v_proj": torch.randn(5, 2)}
    s1, n1 = CountSketch(16, seed=7).sketch(g)
    s2, n2 = CountSketch(16, seed=7).sketch(dict(reversed(list(g.items()))))
    assert torch.equal(s1, s2) and n1 == n2
    assert n1 == pytest.approx(sum(float(t.double().pow(2).sum()) for t in g.values()))
    # linear, memoised hashes give the same result, and a different seed hashes differently
    sketcher = CountSketch(16, seed=7, chunk=5)
    s3, _ = sketcher.sketch({k: 2 * v for k, v in g.items()})
    s4, _ = sketcher.sketch(g)
    torch.testing.assert_close(s3, 2 * s1)
    torch.testing.assert_close(s4, s1)
    assert not torch.equal(CountSketch(16, seed=8).sketch(g)[0], s1)


def test_sketch_hashes_are_exact_field_arithmetic_and_uniform():
    """The polynomial hash equals Python's big-integer arithmetic at the extremes of its range
    (so it cannot overflow int64 on any device), and buckets/signs are balanced."""
    import random

    from slice_trl.mining.sketch import HASH_PRIME as _HASH_PRIME
    from slice_trl.mining.sketch import _poly_hash

    rng = random.Random(0)
    idx = [0, 1, 2**30 - 1] + [rng.randrange(2**30) for _ in range(2000)]
    for coeffs in ([_HASH_PRIME - 1] * 4, [1, 0, 0, 0], [rng.randrange(1, _HASH_PRIME) for _ in range(4)]):
        expected = [(((coeffs[0] * i + coeffs[1]) * i + coeffs[2]) * i + coeffs[3]) % _HASH_PRIME for i in idx]
        assert _poly_hash(torch.tensor(idx, dtype=torch.int64), coeffs).tolist() == expected
    buckets, signs = CountSketch(1000, seed=1).hashes("model.layers.0.mlp.up_proj", 0, 200_000)
    counts = torch.bincount(buckets, minlength=1000).double()
    assert buckets.min() >= 0 and buckets.max() < 1000 and counts.std() < 1.3 * math.sqrt(200)  # ~ Poisson
    assert set(signs.unique().tolist()) == {-1, 1} and abs(signs.double().mean()) < 0.01


def _chat_dataset(make, n=16):
    from datasets import Dataset

    return Dataset.from_list([{"prompt": [{"role": "user", "content": make(i)[0]}],
                               "completion": [{"role": "assistant", "content": make(i)[1]}]} for i in range(n)])


@pytest.fixture
def one_thread():
    """Tiny-model passes are overhead-bound: one thread avoids oversubscribing a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def exact_cosine(a, b) -> float:
    """The exact reference for the sketch: cosine of two whole-model gradient dicts (all modules
    flattened into one vector), in float64."""
    if set(a) != set(b):
        raise ValueError("The two gradient dicts hold different modules.")
    dot = sum(float((a[n].double() * b[n].double()).sum()) for n in a)
    na = sum(float(a[n].double().pow(2).sum()) for n in a)
    nb = sum(float(b[n].double().pow(2).sum()) for n in b)
    return dot / math.sqrt(na * nb) if na > 0 and nb > 0 else 0.0


def test_sketch_cosine_tracks_exact_cosine_on_real_gradients(one_thread):
    """Real mean gradients of a tiny Llama (61,440 target weights) on four tasks, at the random
    base (all cosines positive) and after a short fit to the yes/no mixture (the two tasks'
    gradients then oppose: strongly negative, and mildly negative against the others). With
    k = 16,384 every sketch cosine is within 0.05 of the exact one."""
    from slice_trl.trainer.batching import default_collator, prepare_sft_dataset, sample_batches
    from slice_trl.models.gradients import estimate_mean_gradients, summed_token_loss, target_weights
    from slice_trl.utils.testing import tiny_llama, tiny_tokenizer

    torch.manual_seed(0)
    model, tok = tiny_llama(), tiny_tokenizer()
    weights = target_weights(model)
    collator = default_collator(tok)
    tasks = {
        "yes": _chat_dataset(lambda i: (f"Is {i} even? answer", "yes")),
        "no": _chat_dataset(lambda i: (f"Is {i} even? answer", "no")),
        "count": _chat_dataset(lambda i: (f"count to {i % 9 + 1}", " ".join(str(j) for j in range(i % 9 + 1)))),
        "shout": _chat_dataset(lambda i: (f"shout word{i}", f"WORD{i}!!!")),
    }
    prepared = {n: prepare_sft_dataset(d, tok, 128) for n, d in tasks.items()}
    names = list(tasks)
    sketcher = CountSketch(16_384, seed=42)

    def check(expect_negative: bool):
        grads = {n: estimate_mean_gradients(model, sample_batches(prepared[n], collator, 4, 2, 0), weights)[0]
                 for n in names}
        out = [sketcher.sketch(grads[n]) for n in names]
        approx = cosine_matrix(torch.stack([s for s, _ in out]), [q for _, q in out])
        exact = np.array([[exact_cosine(grads[a], grads[b]) for b in names] for a in names])
        iu = np.triu_indices(len(names), 1)
        assert np.abs(approx[iu] - exact[iu]).max() <= 0.05, (approx[iu], exact[iu])
        return exact[iu]

    base = check(False)
    assert base.min() > 0.0  # the base model: every pair positive (as docs/method.md reports for SmolLM2)

    mix = [b for n in ("yes", "no") for b in sample_batches(prepared[n], collator, 8, 1, 1)]
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(40):
        opt.zero_grad()
        sum(summed_token_loss(model, b) / int((b["labels"][:, 1:] != -100).sum()) for b in mix).backward()
        opt.step()
    fitted = check(True)
    assert fitted.min() < -0.5 and (fitted < 0).sum() >= 2 and fitted.max() > 0.1


# ------------------------------------------------------------------------------------------
# The command, end to end, on local natural-instructions files with a tiny model
# ------------------------------------------------------------------------------------------

_TASKS = {
    "task901_yes_no": ("Answer yes or no: is the number even?", lambda i: (f"{i}", "yes" if i % 2 == 0 else "no")),
    "task902_reverse": ("Reverse the word.", lambda i: (f"word{i}", f"{i}drow")),
    "task903_count": ("Count from one up to the number.", lambda i: (f"{i % 5 + 1}", " ".join(map(str, range(1, i % 5 + 2))))),
    "task904_shout": ("Repeat the input in capitals.", lambda i: (f"hello there {i}", f"HELLO THERE {i}")),
}


def _write_ni_task(path: Path, definition: str, make, n: int = 12) -> None:
    instances = [{"id": f"{path.stem}-{i}", "input": make(i)[0], "output": [make(i)[1]]} for i in range(n)]
    path.write_text(json.dumps({"Contributors": ["test"], "Source": ["synthetic"], "URL": [float("nan")],
                                "Definition": [definition], "Positive Examples": [], "Negative Examples": [],
                                "Instances": instances}), encoding="utf-8")


@pytest.fixture
def ni_pool(tmp_path):
    """A pool file over four natural-instructions task files and a saved tiny Llama."""
    from slice_trl.utils.testing import tiny_llama, tiny_tokenizer

    data = tmp_path / "ni_tasks"
    data.mkdir()
    for name, (definition, make) in _TASKS.items():
        _write_ni_task(data / f"{name}.json", definition, make)
    model_dir = tmp_path / "tiny-llama"
    tiny_llama().save_pretrained(model_dir)
    tiny_tokenizer().save_pretrained(model_dir)
    pool = tmp_path / "pool.yaml"
    pool.write_text(yaml.safe_dump({
        "model": "tiny-llama", "tasks": "ni_tasks",  # relative to the pool file
        "calibration": {"batches": 2, "batch_size": 2, "max_length": 128},
        "sketch_size": 4096, "seed": 42,
    }), encoding="utf-8")
    return pool


def _run_cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", HF_DATASETS_DISABLE_PROGRESS_BARS="1")
    return subprocess.run([sys.executable, "-m", "slice_trl.mine", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_end_to_end_with_cache_reuse(ni_pool, tmp_path, capsys, one_thread):
    out = tmp_path / "out"
    proc = _run_cli(ni_pool, "--length", 3, "--top", 3, "--output-dir", out, "--device", "cpu", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "task gradients" in proc.stderr and "scoring C(4,3) subsets" in proc.stderr  # progress bars
    for f in ("cosines.csv", "cosine_heatmap.png", "top_subsets.json", "recipe.yaml", "mining_summary.json"):
        assert (out / f).stat().st_size > 0, f
    assert (out / "cosine_heatmap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    names = sorted(_TASKS)
    rows = (out / "cosines.csv").read_text().splitlines()
    assert rows[0].split(",")[1:] == names
    cos = np.array([[float(v) for v in r.split(",")[1:]] for r in rows[1:]])
    np.testing.assert_allclose(cos, cos.T, atol=1e-6)
    top = json.loads((out / "top_subsets.json").read_text())
    assert [r["rank"] for r in top] == [1, 2, 3]
    for r in top:  # each reported score is the mean pairwise cosine of its (alphabetical) set
        idx = [names.index(t) for t in r["tasks"]]
        assert r["tasks"] == sorted(r["tasks"])
        assert r["mean_cosine"] == pytest.approx(np.mean([cos[a, b] for a, b in itertools.combinations(idx, 2)]),
                                                 abs=1e-5)
    assert [r["mean_cosine"] for r in top] == sorted(r["mean_cosine"] for r in top)

    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert set(recipe) == {"model_name_or_path", "tasks", "init"} and recipe["init"] == {"method": "slice"}
    assert Path(recipe["model_name_or_path"]) == (tmp_path / "tiny-llama").resolve()
    order = [t["name"] for t in recipe["tasks"]]
    assert sorted(order) == top[0]["tasks"]
    assert all(t["source"] == "superni" and Path(t["path"]).is_file() for t in recipe["tasks"])
    from slice_trl.cli.recipe import load_recipe  # the recipe is one the training command accepts

    assert [s.display_name for s in load_recipe(out / "recipe.yaml", for_this_machine=False).task_specs] == \
        [t["name"] for t in recipe["tasks"]]
    # the order minimises the sum of consecutive-pair cosines
    idx = [names.index(t) for t in order]
    cost = sum(cos[a, b] for a, b in zip(idx, idx[1:]))
    assert cost <= min(sum(cos[a, b] for a, b in zip(p, p[1:])) for p in itertools.permutations(idx)) + 1e-5
    summary = json.loads((out / "mining_summary.json").read_text())
    assert summary["order"] == order and not any(r["cached"] for r in summary["tasks"].values())
    assert all(r["n_batches"] == 2 and r["label_tokens"] > 0 for r in summary["tasks"].values())

    # Reruns in-process (same `main`, no second interpreter start-up). Everything cached: the
    # model is never loaded.
    import slice_trl.models.loading
    from slice_trl.mine import main

    def no_model(*args, **kwargs):
        raise AssertionError("a fully cached rerun must not load the model")

    argv = [str(ni_pool), "--length", "3", "--top", "3", "--output-dir", str(out), "--no-progress"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(slice_trl.models.loading, "load_model_and_tokenizer", no_model)
        assert main(argv) == 0
    assert "4 gradients from cache" in capsys.readouterr().out
    assert (out / "cosines.csv").read_text().splitlines() == rows
    # one entry removed: only that task is recomputed, with the same result
    cache_files = sorted((out / "grad_cache").glob("*.safetensors"))
    assert len(cache_files) == 4
    cache_files[0].unlink()
    assert main(argv + ["--device", "cpu"]) == 0
    assert "3 gradients from cache" in capsys.readouterr().out
    again = json.loads((out / "mining_summary.json").read_text())
    assert sum(r["cached"] for r in again["tasks"].values()) == 3
    np.testing.assert_allclose(
        np.array([[float(v) for v in r.split(",")[1:]] for r in (out / "cosines.csv").read_text().splitlines()[1:]]),
        cos, atol=1e-5)
    assert yaml.safe_load((out / "recipe.yaml").read_text()) == recipe


# ------------------------------------------------------------------------------------------
# Bad input: clear errors, raised before any model is loaded
# ------------------------------------------------------------------------------------------

def _pool_file(tmp_path, **data):
    path = tmp_path / "bad_pool.yaml"
    path.write_text(yaml.safe_dump({"model": "no-such-model", **data}), encoding="utf-8")
    return path


def _ni_dir(tmp_path, n=3):
    d = tmp_path / "ni"
    d.mkdir(exist_ok=True)
    for name in sorted(_TASKS)[:n]:
        _write_ni_task(d / f"{name}.json", *_TASKS[name], n=4)
    return d


def _cli_error(capsys, *argv) -> str:
    from slice_trl.mine import main

    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    return err


def test_length_larger_than_pool_is_a_clear_error(tmp_path, capsys):
    pool = _pool_file(tmp_path, tasks=str(_ni_dir(tmp_path)))
    err = _cli_error(capsys, pool, "--length", 5)
    assert "--length N=5 is larger than the pool (3 tasks)" in err and "N <= 3" in err
    assert "--length N=1 must be an integer >= 2" in _cli_error(capsys, pool, "--length", 1)
    assert "--top K=0 must be >= 1" in _cli_error(capsys, pool, "--length", 2, "--top", 0)


def test_duplicate_tasks_are_a_clear_error(tmp_path, capsys):
    d = _ni_dir(tmp_path)
    f = sorted(d.glob("*.json"))[0]
    same_file = _pool_file(tmp_path, tasks=[{"name": "a", "source": "superni", "path": str(f)},
                                            {"name": "b", "source": "superni", "path": str(f)}])
    assert "Duplicate task: 'b' reads the same data as 'a'" in _cli_error(capsys, same_file, "--length", 2)
    # the same file named through its directory + task id is the same task too
    via_dir = _pool_file(tmp_path, tasks=[{"name": "a", "source": "superni", "path": str(f)},
                                          {"name": "b", "source": "superni", "path": str(d), "task": f.stem}])
    with pytest.raises(PoolError, match="Duplicate task: 'b'"):
        load_pool(via_dir)
    same_name = _pool_file(tmp_path, tasks=[{"name": "a", "source": "superni", "path": str(p)} for p in sorted(d.glob("*.json"))[:2]])
    with pytest.raises(PoolError, match="Duplicate task name 'a'"):
        load_pool(same_name)


def test_bad_sketch_size_and_keys_are_clear_errors(tmp_path, capsys):
    d = str(_ni_dir(tmp_path))
    for k in (0, -5):
        err = _cli_error(capsys, _pool_file(tmp_path, tasks=d, sketch_size=k), "--length", 2)
        assert f"sketch_size k={k} must be an integer >= 1" in err
    assert "sketch_size k=0 must be an integer >= 1" in _cli_error(
        capsys, _pool_file(tmp_path, tasks=d), "--length", 2, "--sketch-size", 0)
    with pytest.raises(PoolError, match="has no key 'calibraton'. Did you mean 'calibration'"):
        load_pool(_pool_file(tmp_path, tasks=d, calibraton={"batches": 4}))
    with pytest.raises(PoolError, match="calibration.batches=0 must be an integer >= 1"):
        load_pool(_pool_file(tmp_path, tasks=d, calibration={"batches": 0}))
    with pytest.raises(PoolError, match="'tasks' is missing"):
        load_pool(_pool_file(tmp_path))
    with pytest.raises(PoolError, match="not a directory"):
        load_pool(_pool_file(tmp_path, tasks=str(tmp_path / "nowhere")))
