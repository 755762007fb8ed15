"""Run integrity (slice_trl.models.integrity, slice_trl.cli.preflight): a rerun in the same output_dir resumes
only with an equal fingerprint, --overwrite moves the old run aside before anything new is
written, a damaged stage is named, every bad setting fails under --dry-run before any model loads,
a recipe's env: cannot redirect the Hub token, and the console stays quiet and readable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from slice_trl.models import integrity
from slice_trl import run as run_mod
from slice_trl.trainer import stages
from slice_trl.utils.testing import tiny_llama, tiny_recipe_yaml, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("restore_root_logger")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    """A tiny random Llama (hidden 64) and its tokenizer saved as a local checkpoint."""
    base = tmp_path_factory.mktemp("base") / "tiny-llama"
    tiny_llama(seed=3).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    return base


def _recipe(tmp_path: Path, base: Path, out: Path, extra: str = "", name: str = "tiny.yaml") -> Path:
    path = tmp_path / name
    path.write_text(tiny_recipe_yaml(base, out, extra=extra))
    return path


def _cli(*args, cwd=None) -> subprocess.CompletedProcess:
    """`python -m slice_trl.run ...` as a user runs it (stdout and stderr are pipes, not a terminal)."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "slice_trl.run", *map(str, args)], capture_output=True, text=True,
                          timeout=600, cwd=str(cwd or REPO_ROOT), env=env)


def _snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ------------------------------------------------------------------------------ fingerprint units
def _config(tmp_path, **kw):
    from slice_trl.configs.config import ContinualSFTConfig

    return ContinualSFTConfig(**{"output_dir": str(tmp_path / "o"), "use_cpu": True, **kw})


def test_training_fingerprint_covers_every_config_field_except_the_ignored_ones(tmp_path):
    """Generic: a field added to ContinualSFTConfig (or TRL/transformers) is fingerprinted without an
    edit; only the documented keys that cannot change results are left out."""
    args = _config(tmp_path)
    fp = integrity.training_fingerprint(args)
    expected = {f.name for f in fields(args)} - integrity.IGNORED_KEYS
    assert set(fp) == expected
    assert {"learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps", "seed",
            "per_device_train_batch_size", "gradient_accumulation_steps", "max_length", "completion_only_loss",
            "init", "replay", "evaluation", "strategy"} <= set(fp)
    assert "hub_token" not in fp and "output_dir" not in fp and "report_to" not in fp


def test_ignored_keys_do_not_change_the_fingerprint_and_others_do(tmp_path):
    from peft import LoraConfig

    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"])
    base = {"id": "m", "revision": None}

    def fp(**kw):
        return integrity.run_fingerprint(_config(tmp_path, **kw), lora, base, task_names=["a"])

    ref = fp()
    same = fp(logging_steps=3, report_to="none", dataloader_num_workers=1, resume=False, run_name="x",
              output_dir=str(tmp_path / "elsewhere"))
    assert integrity.differences(ref, same) == []
    assert integrity.differences(ref, fp(learning_rate=2e-4)) == ["learning_rate: 0.0001 -> 0.0002"]
    assert integrity.differences(ref, fp(init={"method": "vanilla"})) == ["init.method: 'slice' -> 'vanilla'"]
    assert integrity.differences(ref, fp(evaluation={"max_samples": 5})) == ["evaluation.max_samples: 64 -> 5"]
    other_lora = integrity.run_fingerprint(_config(tmp_path), LoraConfig(r=8, target_modules=["v_proj", "q_proj"]),
                                           base, task_names=["a"])
    assert integrity.differences(ref, other_lora) == ["lora.r: 4 -> 8"]  # a set's order is not a difference


def test_flatten_and_differences_by_hand():
    old = {"training": {"learning_rate": 1.0, "init": {"method": "slice", "c": 1.0}}, "lora": {"r": 4},
           "tasks": [{"name": "a", "sha256": "x"}]}
    new = {"training": {"learning_rate": 1.0, "init": {"method": "slice", "c": 0.5}, "new_flag": True},
           "lora": {"r": 4}, "tasks": [{"name": "a", "sha256": "y"}]}
    assert integrity.flatten(old) == {"learning_rate": 1.0, "init.method": "slice", "init.c": 1.0, "lora.r": 4,
                                      "tasks[0].name": "a", "tasks[0].sha256": "x"}
    assert integrity.differences(old, new) == ["init.c: 1.0 -> 0.5", "tasks[0].sha256: 'x' -> 'y'",
                                               "new_flag: (unset) -> True"]
    assert integrity.differences(old, new, sections=("lora",)) == []
    assert integrity.differences(old, new, skip=("init.c", "new_flag")) == ["tasks[0].sha256: 'x' -> 'y'"]
    # a run stored before init.gradient_checkpointing was renamed compares under the new name
    renamed = {"training": {"init": {"gradient_checkpointing": False}}}
    assert integrity.differences(renamed, {"training": {"init": {"activation_checkpointing": False}}}) == []
    assert integrity.differences(renamed, {"training": {"init": {"activation_checkpointing": True}}}) == [
        "init.activation_checkpointing: False -> True"]


def test_task_fingerprint_follows_the_content(tiny_tokenizer):
    from datasets import Dataset

    from slice_trl.tasks.base import Task

    def task(answer, name="t"):
        rows = [{"prompt": f"q{i}", "completion": answer} for i in range(4)]
        return Task(name, Dataset.from_list(rows[:3]), Dataset.from_list(rows[3:]), "exact_match", {"source": "x"})

    a, b = integrity.task_fingerprint(task("yes")), integrity.task_fingerprint(task("yes"))
    assert a == b and (a["n_train"], a["n_eval"], a["metric"], a["source"]) == (3, 1, "exact_match", "x")
    assert integrity.task_fingerprint(task("no"))["sha256"] != a["sha256"]  # same name, other data


def test_checkpoint_hash_is_cached_and_follows_the_files(tmp_path, monkeypatch):
    monkeypatch.setenv("SLICE_TRL_CACHE", str(tmp_path / "cache"))
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "model.safetensors").write_bytes(b"\0" * 100)
    (ckpt / "config.json").write_text("{}")
    first = integrity.model_identity(str(ckpt), None)
    cache = json.loads((tmp_path / "cache" / "files_sha256.json").read_text())
    assert len(cache) == 2  # one entry per file, keyed by path, size and mtime
    assert integrity.model_identity(str(ckpt), None) == first
    (ckpt / "model.safetensors").write_bytes(b"\1" * 100)  # same size, new content (and mtime)
    assert integrity.model_identity(str(ckpt), None)["files_sha256"] != first["files_sha256"]
    assert integrity.model_identity("org/hub-model", "abc") == {"id": "org/hub-model", "revision": "abc"}


def test_move_aside_moves_everything_and_keeps_the_folder(tmp_path):
    out = tmp_path / "run"
    (out / "stages" / "01-a").mkdir(parents=True)
    (out / "base").mkdir()  # a folder another feature writes: moved too
    (out / "run.json").write_text("{}")
    (out / "base" / "scores.json").write_text("1")
    before = _snapshot(out)
    moved = integrity.move_aside(out)
    assert moved.parent == tmp_path and moved.name.startswith("run.replaced-")
    assert out.is_dir() and list(out.iterdir()) == []
    assert _snapshot(moved) == before
    assert integrity.move_aside(out) is None  # nothing left to move


def test_recipe_env_may_not_set_credential_or_endpoint_variables():
    from slice_trl.cli.recipe import refused_env_keys  # env: is an allow-list (issue 27)

    bad = ["HF_ENDPOINT", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HOME", "HF_TOKEN_PATH", "https_proxy",
           "ALL_PROXY", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE", "WANDB_API_KEY", "AWS_SECRET_ACCESS_KEY"]
    good = ["TOKENIZERS_PARALLELISM", "HF_HUB_OFFLINE", "OMP_NUM_THREADS", "CUDA_VISIBLE_DEVICES",
            "HF_DATASETS_OFFLINE"]
    assert refused_env_keys({k: "x" for k in bad + good}) == sorted(bad)


def test_damaged_or_incomplete_stage_is_named(tmp_path):
    import torch
    from safetensors.torch import save_file

    out = tmp_path / "run"
    for t, name in enumerate(["a", "b"]):
        stage = out / "stages" / f"0{t + 1}-{name}"
        for sub in ("init_adapter", "adapter"):
            (stage / sub).mkdir(parents=True)
            save_file({"w": torch.zeros(64)}, str(stage / sub / "adapter_model.safetensors"))
        (stage / "record.json").write_text("{}")
    assert stages.check_finished(out, ["a", "b"]) == 2
    raw = out / "stages" / "02-b" / "adapter" / "adapter_model.safetensors"
    raw.write_bytes(raw.read_bytes()[:-50])  # truncated
    with pytest.raises(stages.DamagedStageError, match=r"02-b.*adapter/adapter_model.safetensors is damaged.*"
                                                       r"Delete that folder to retrain stage 2"):
        stages.check_finished(out, ["a", "b"])
    (out / "stages" / "01-a" / "init_adapter" / "adapter_model.safetensors").unlink()
    with pytest.raises(stages.DamagedStageError, match=r"01-a.*init_adapter/adapter_model.safetensors is missing"):
        stages.check_finished(out, ["a", "b"])


# ------------------------------------------------------------------------------ default metric
def _readme_metric_table() -> dict[str, str]:
    """shared/data/README.md's table: task file -> metric ("exact match" / "ROUGE-L")."""
    table = {}
    for line in (SHARED / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[0].endswith(".json"):
            table[cells[0]] = {"exact match": "exact_match", "ROUGE-L": "rougeL"}[cells[3]]
    return table


@pytest.mark.skipif(not (SHARED / "superni").is_dir(), reason="shared Super-NI data not on this machine")
def test_default_metric_reproduces_the_shared_data_table():
    from slice_trl.tasks import load_superni_task

    table = _readme_metric_table()
    assert len(table) == 6
    for file, metric in table.items():
        task = load_superni_task(SHARED / "superni" / file, max_eval=4)
        assert task.metric == metric, (file, task.info["metric_reason"])
        assert task.info["metric_reason"]


def _superni_file(path: Path, outputs: list[str], name: str) -> Path:
    data = {"Definition": ["Answer."], "Instances": [{"id": str(i), "input": f"text {i}", "output": [o]}
                                                     for i, o in enumerate(outputs)]}
    file = path / f"{name}.json"
    file.write_text(json.dumps(data))
    return file


def test_closed_label_set_is_scored_by_exact_match(tmp_path):
    from slice_trl.tasks import load_superni_task

    emotions = ["joy", "anger", "fear", "sadness"] * 10  # a closed set of 4 labels, 10 each
    task = load_superni_task(_superni_file(tmp_path, emotions, "task875_emotion"), max_eval=4)
    assert task.metric == "exact_match" and "closed label set of 4" in task.info["metric_reason"]
    free = [f"a different sentence number {i}" for i in range(40)]
    assert load_superni_task(_superni_file(tmp_path, free, "task999_free"), max_eval=4).metric == "rougeL"
    counts = [str(i % 4) for i in range(40)]  # 4 distinct numbers: open-ended values, not labels
    task = load_superni_task(_superni_file(tmp_path, counts, "task998_count"), max_eval=4)
    assert task.metric == "rougeL" and "numeric" in task.info["metric_reason"]
    few = ["joy", "anger", "fear", "sadness", "joy", "anger"]  # labels do not repeat enough to be a set
    assert load_superni_task(_superni_file(tmp_path, few, "task997_few"), max_eval=2).metric == "rougeL"
    task = load_superni_task(_superni_file(tmp_path, emotions, "task996_set"), max_eval=4, metric="rougeL")
    assert task.metric == "rougeL" and task.info["metric_reason"] == "set in the recipe"


# ------------------------------------------------------------------------------ bad recipes under --dry-run
def _invalid_json(tmp):
    (tmp / "broken.json").write_text('{"Definition": ["x"], "Instances": [')
    return f"tasks:\n  - {{name: first, source: superni, path: {tmp / 'broken.json'}}}\n"


def _invalid_jsonl(tmp):
    (tmp / "rows.jsonl").write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "c", completion}\n')
    return f"tasks:\n  - {{name: first, source: generic, path: {tmp / 'rows.jsonl'}}}\n"


def _one_instance(tmp):
    _superni_file(tmp, ["yes"], "task001_single")
    return f"tasks:\n  - {{name: first, source: superni, path: {tmp / 'task001_single.json'}}}\n"


def _file(tmp):
    (tmp / "a_file").write_text("x")
    return tmp / "a_file"


# (id, overrides or callable tmp -> overrides, extra YAML or callable tmp -> YAML, substrings of the message)
BAD = [
    ("lr_zero", ["--learning_rate", "0"], "", ["learning_rate=0 ", "> 0", "--learning_rate 1e-4"]),
    ("lr_negative", ["--learning_rate", "-1e-4"], "", ["learning_rate=-0.0001", "> 0"]),
    ("epochs_zero", ["--num_train_epochs", "0"], "", ["num_train_epochs=0 ", "max_steps", "--num_train_epochs 1"]),
    ("max_steps_zero", ["--max_steps", "0"], "", ["max_steps=0", "-1", ">= 1"]),
    ("max_steps_below_minus_one", ["--max_steps", "-5"], "", ["max_steps=-5", "--max_steps -1"]),
    ("batch_zero", ["--per_device_train_batch_size", "0"], "", ["per_device_train_batch_size=0", ">= 1"]),
    ("accumulation_zero", ["--gradient_accumulation_steps", "0"], "", ["gradient_accumulation_steps=0", ">= 1"]),
    ("dropout_one", ["--lora_dropout", "1.0"], "", ["lora_dropout=1.0", "[0, 1)"]),
    ("dropout_negative", ["--lora_dropout", "-0.1"], "", ["lora_dropout=-0.1", "[0, 1)"]),
    ("alpha_zero", ["--lora_alpha", "0"], "", ["lora_alpha=0", "> 0", "--lora_alpha"]),
    ("max_length_zero", ["--max_length", "0"], "", ["max_length=0", ">= 1"]),
    ("weight_decay_negative", ["--weight_decay", "-0.1"], "", ["weight_decay=-0.1", ">= 0"]),
    ("target_module_absent", ["--lora_target_modules", "[q_proj, qkv_proj]"], "",
     ["lora_target_modules=['q_proj', 'qkv_proj']", "no module ['qkv_proj']", "down_proj", "q_proj"]),
    ("no_target_module_matches", ["--lora_target_modules", "[attn_c]"], "",
     ["lora_target_modules='attn_c'", "matches no module", "all-linear"]),
    ("rank_too_large_for_slice", ["--lora_r", "40"], "", ["lora_r=40", "2r=80 <= 64", "Lower r to at most 32"]),
    ("rank_too_large_for_vanilla", ["--lora_r", "80", "--init.method", "vanilla"], "",
     ["lora_r=80", "r=80 <= 64", "at most 64"]),
    ("output_dir_is_a_file", lambda tmp: ["--output_dir", str(_file(tmp))], "",
     ["output_dir=", "a_file", "is a file", "--output_dir"]),
    ("output_dir_below_a_file", lambda tmp: ["--output_dir", str(_file(tmp) / "run")], "",
     ["output_dir=", "cannot be created", "is a file"]),
    ("output_dir_not_writable", ["--output_dir", "/proc/slice-trl-test-run"], "",
     ["output_dir='/proc/slice-trl-test-run'", "not writable", "writable --output_dir"]),
    ("push_repo_id_malformed", ["--push_repo_id", "me//run"], "", ["push_repo_id='me//run'", "not a valid Hub repo id",
                                                                   "namespace/name"]),
    ("push_dataset_repo_id_malformed", ["--push_dataset_repo_id", "my data"], "",
     ["push_dataset_repo_id='my data'", "not a valid Hub repo id"]),
    ("task_file_not_json", [], _invalid_json, ["tasks[0] (first)", "broken.json", "is not valid JSON"]),
    ("task_jsonl_line_not_json", [], _invalid_jsonl, ["tasks[0] (first)", "rows.jsonl", "line 2 is not valid JSON"]),
    ("task_with_one_instance", [], _one_instance, ["tasks[0] (first)", "task001_single", "at least 2"]),
    ("env_hf_endpoint", [], "env: {HF_ENDPOINT: 'http://elsewhere.example'}\n", ["env sets ['HF_ENDPOINT']",
                                                                                "may not set"]),
    ("env_hf_token", [], "env: {HF_TOKEN: hf_abc}\n", ["env sets ['HF_TOKEN']"]),
    ("env_proxy", [], "env: {HTTPS_PROXY: 'http://proxy.example:3128'}\n", ["env sets ['HTTPS_PROXY']"]),
]


@pytest.mark.parametrize("overrides, extra, needles", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_recipe_fails_dry_run_with_one_line(tmp_path, tiny_base, capsys, no_model_loading, overrides, extra,
                                                needles):
    """Each bad setting: --dry-run exits non-zero with ONE line naming the key, the value and the
    fix, loads no model or tokenizer, and writes nothing."""
    extra = extra(tmp_path) if callable(extra) else extra
    text = tiny_recipe_yaml(tiny_base, tmp_path / "out", extra="")
    if extra.startswith("tasks:"):  # replace the task list
        text = text[:text.index("tasks:")] + extra + text[text.index("init:"):]
    else:
        text += extra
    recipe = tmp_path / "bad.yaml"
    recipe.write_text(text)
    overrides = overrides(tmp_path) if callable(overrides) else overrides
    env_before = dict(os.environ)
    capsys.readouterr()
    assert run_mod.main([str(recipe), "--dry-run", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    for needle in needles:
        assert needle in err, f"{needle!r} not in {err!r}"
    assert not (tmp_path / "out").exists()
    assert dict(os.environ) == env_before  # a rejected env: is not applied


def test_bad_recipe_through_the_real_entry_point(tmp_path, tiny_base):
    """`python -m slice_trl.run`: exit status 2 and one line on stderr."""
    recipe = _recipe(tmp_path, tiny_base, tmp_path / "out", extra="env: {HF_ENDPOINT: 'http://elsewhere.example'}\n")
    proc = _cli(recipe, "--dry-run")
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "HF_ENDPOINT" in proc.stderr
    proc = _cli(_recipe(tmp_path, tiny_base, tmp_path / "out", name="ok.yaml"), "--dry-run", "--lora_dropout", "1")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: lora_dropout=1 must be in [0, 1); set e.g. --lora_dropout 0.05, or 0 for none."]


# ------------------------------------------------------------------------------ reruns end to end
def test_rerun_with_other_settings_stops_same_settings_resume(tmp_path, tiny_base):
    """The quickstart's own advice ("drop the override to run SLICE") in one output_dir: the second
    command stops before the model loads, naming init.method, and changes nothing; the same
    command twice resumes without retraining. Through the real entry point (stdout is a pipe):
    the console is quiet and readable, and --verbose restores the libraries' output."""
    out = tmp_path / "out"
    recipe = _recipe(tmp_path, tiny_base, out)
    first = _cli(recipe, "--init.method", "vanilla")
    assert first.returncode == 0, first.stderr[-3000:]
    log = first.stdout + first.stderr
    lines = log.splitlines()
    # quiet console: one line per task and per stage, R once, no library bars or step dicts
    assert sum("stage 1/2 first [vanilla]" in x for x in lines) == 1 and sum("stage 2/2 last" in x for x in lines) == 1
    assert sum("task first: 16 train / 4 eval, metric exact_match" in x for x in lines) == 1
    assert log.count("R: score (x100)") == 1
    assert any(x.startswith("AP ") and x.endswith("(x100, after stage 2)") for x in lines)  # the footer is not wrapped
    for noise in ("Tokenizing", "Loading weights", "Writing model shards", "'loss'", "\r", "FutureWarning"):
        assert noise not in log, noise
    assert max(len(x) for x in lines) < 200
    before = _snapshot(out)
    run_file = json.loads((out / "run.json").read_text())
    assert run_file["fingerprint"]["training"]["init"]["method"] == "vanilla"

    slice_run = _cli(recipe)  # SLICE, same output_dir
    assert slice_run.returncode == 2
    err = slice_run.stderr.strip()
    assert len(err.splitlines()) == 1 and "init.method: 'vanilla' -> 'slice'" in err
    assert "--overwrite" in err and "new output_dir" in err and "Loading weights" not in slice_run.stderr
    assert _snapshot(out) == before  # nothing rewritten
    dry = _cli(recipe, "--dry-run")
    assert dry.returncode == 2 and "init.method: 'vanilla' -> 'slice'" in dry.stderr

    again = _cli(recipe, "--init.method", "vanilla", "--verbose", "--logging_steps", "2")  # a key that cannot matter
    assert again.returncode == 0, again.stderr[-3000:]
    assert "INFO slice_trl.trainer.continual_sft_trainer: Resumed stage 2 (last)" in again.stderr  # --verbose: logs as they come,
    assert "FutureWarning" in again.stderr  # library warnings included
    stage_files = {k: v for k, v in before.items() if k.startswith("stages")}
    assert {k: v for k, v in _snapshot(out).items() if k.startswith("stages")} == stage_files  # nothing retrained
    assert json.loads((out / "run.json").read_text())["fingerprint"] == run_file["fingerprint"]


def test_changed_task_data_under_the_same_name_stops(tmp_path, tiny_base, monkeypatch):
    import slice_trl.models.loading

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"q{i}", "completion": "a"}) + "\n" for i in range(8)))
    tasks = (f"tasks:\n  - {{name: first, source: generic, path: {data}, max_eval: 2}}\n"
             "  - {name: last, source: builtin, max_train: 8, max_eval: 2}\n")
    text = tiny_recipe_yaml(tiny_base, tmp_path / "out")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text[:text.index("tasks:")] + tasks + text[text.index("init:"):])
    assert run_mod.main([str(recipe), "--max_steps", "1"]) == 0
    data.write_text(data.read_text().replace('"a"', '"b"'))  # same task name, other answers

    def forbidden(*a, **k):
        raise AssertionError("the model was loaded before the check")

    monkeypatch.setattr(slice_trl.models.loading, "load_model_and_tokenizer", forbidden)
    with pytest.raises(run_mod.RecipeError, match=r"tasks\[0\]\.sha256: '[0-9a-f]+' -> '[0-9a-f]+'"):
        run_mod.run(run_mod.load_recipe(recipe, ["--max_steps", "1"]))


def test_killed_overwrite_never_resumes_stale_stages_and_damage_is_named(tmp_path, tiny_base, monkeypatch,
                                                                        one_torch_thread):
    import slice_trl.models.loading
    from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

    out = tmp_path / "out"
    recipe = _recipe(tmp_path, tiny_base, out)
    assert run_mod.main([str(recipe), "--init.method", "vanilla", "--max_steps", "1"]) == 0
    old = _snapshot(out)

    class Killed(ContinualSFTTrainer):
        def train_stage(self, t):
            if t == 1:
                raise KeyboardInterrupt  # killed during stage 2 of the new run
            return super().train_stage(t)

    with monkeypatch.context() as mp:
        mp.setattr("slice_trl.trainer.continual_sft_trainer.ContinualSFTTrainer", Killed)
        # main() ends a Ctrl-C with one line and exit 130 (issue 27)
        assert run_mod.main([str(recipe), "--overwrite", "--max_steps", "1"]) == 130
    aside = [p for p in tmp_path.iterdir() if p.name.startswith("out.replaced-")]
    assert len(aside) == 1 and _snapshot(aside[0]) == old  # the old run, whole, beside
    assert json.loads((out / "stages" / "01-first" / "record.json").read_text())["init"]["method"] == "slice"
    assert not (out / "stages" / "02-last" / "record.json").exists()
    assert json.loads((out / "run.json").read_text())["fingerprint"]["training"]["init"]["method"] == "slice"

    # the stage the new run finished is damaged: one message naming its folder, before the model loads
    weights = out / "stages" / "01-first" / "adapter" / "adapter_model.safetensors"
    intact = weights.read_bytes()
    weights.write_bytes(intact[:-64])
    with monkeypatch.context() as mp:
        mp.setattr(slice_trl.models.loading, "load_model_and_tokenizer", lambda *a, **k: (_ for _ in ()).throw(
            AssertionError("model loaded")))
        with pytest.raises(run_mod.RecipeError, match=r"01-first.*is damaged.*Delete that folder to retrain stage 1"):
            run_mod.run(run_mod.load_recipe(recipe, ["--max_steps", "1"]))
    weights.write_bytes(intact)

    # resuming (no --overwrite) continues the new run only
    result = run_mod.run(run_mod.load_recipe(recipe, ["--max_steps", "1"]))
    assert [r["init"]["method"] for r in result.records] == ["slice", "slice"]
    assert [json.loads((out / "stages" / s / "record.json").read_text())["init"]["method"]
            for s in ("01-first", "02-last")] == ["slice", "slice"]


def _finished_stage(out: Path, task: str) -> None:
    """Stage 1 of ``task`` finished in ``out``: both adapters' weights (zeros) and a record."""
    import torch
    from safetensors.torch import save_file

    from slice_trl.utils.run_folder import RunFolder

    stage = RunFolder(out).stage(0, task)
    for sub in (stage.init, stage.raw):
        sub.mkdir(parents=True)
        save_file({"w": torch.zeros(4)}, str(sub / stage.WEIGHTS))
    stage.record.write_text("{}")


def test_trainer_keeps_its_own_check_for_python_api_users(tmp_path):
    from peft import LoraConfig

    from slice_trl.configs.config import ContinualSFTConfig
    from slice_trl.tasks import builtin_task
    from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

    tok = tiny_tokenizer()
    tasks = [builtin_task("first", n_train=8, n_eval=2), builtin_task("last", n_train=8, n_eval=2)]

    def build(**kw):
        args = ContinualSFTConfig(output_dir=str(tmp_path / "out"), use_cpu=True, max_length=96, **kw)
        return ContinualSFTTrainer(model=tiny_llama(seed=1), args=args, tasks=tasks, processing_class=tok,
                                   peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))

    first = build()
    (tmp_path / "out").mkdir(exist_ok=True)
    (tmp_path / "out" / "run.json").write_text(json.dumps({"fingerprint": first.fingerprint}))
    _finished_stage(tmp_path / "out", "first")  # a run that finished no stage would simply restart (issue 27)
    assert build().fingerprint == first.fingerprint  # same settings, same in-memory weights: resumes
    with pytest.raises(ValueError, match=r"learning_rate: 0\.0001 -> 0\.0003.*resume=False"):
        build(learning_rate=3e-4)
    with pytest.raises(ValueError, match=r"base_model\.state_sha256"):
        ContinualSFTTrainer(model=tiny_llama(seed=2), args=first.args, tasks=tasks, processing_class=tok,
                            peft_config=LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    build(learning_rate=3e-4, resume=False)  # starting over is allowed (train() moves the old run aside)


def test_quickstart_vanilla_then_slice_is_refused_under_dry_run(tmp_path, capsys, no_model_loading):
    """The shipped quickstart recipe: with a vanilla run's run.json in output_dir, the SLICE command
    is refused (naming init.method) and the vanilla command would resume; no model is loaded."""
    from slice_trl.cli import preflight
    from slice_trl.cli.recipe import load_recipe

    quickstart = REPO_ROOT / "recipes" / "quickstart.yaml"
    out = tmp_path / "quickstart"
    vanilla = load_recipe(quickstart, ["--init.method", "vanilla", "--output_dir", str(out)])
    m = vanilla.model
    out.mkdir()
    (out / "run.json").write_text(json.dumps({"fingerprint": integrity.run_fingerprint(
        vanilla.training, vanilla.lora_config(), integrity.model_identity(m.model_name_or_path, m.model_revision),
        task_names=[s.display_name for s in vanilla.task_specs])}))
    _finished_stage(out, vanilla.task_specs[0].display_name)  # with no finished stage it would restart (issue 27)
    assert preflight.check_previous_run(vanilla) == "resume"
    capsys.readouterr()
    assert run_mod.main([str(quickstart), "--dry-run", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "init.method: 'vanilla' -> 'slice'" in err and "--overwrite" in err
    assert run_mod.main([str(quickstart), "--dry-run", "--output_dir", str(out), "--init.method", "vanilla"]) == 0
    assert "output_dir: resumes the run there" in capsys.readouterr().out
    assert run_mod.main([str(quickstart), "--dry-run", "--output_dir", str(out), "--overwrite"]) == 0
    assert "moves the previous run there aside" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["run.json", "stages"]  # a dry run moves nothing


def test_stage_line_says_whether_the_projection_fired():
    from slice_trl.utils.console import stage_line

    def record(surgery, method="slice"):
        return {"stage": 2, "task": "last", "scores": {"first": 0.25, "last": 1.0},
                "init": {"method": method, "surgery": surgery}}

    fired = {"cosine": -0.5, "gamma": 0.25, "fired": True}
    assert stage_line(record(fired), 3) == ("stage 2/3 last [slice, projection fired (cos -0.500, gamma 0.250)]  "
                                            "scores x100: first 25.0  last 100.0")
    assert "projection did not fire (cos +0.300, gamma 0.000)" in stage_line(
        record({"cosine": 0.3, "gamma": 0.0, "fired": False}), 3)
    assert "projection not applied (no earlier task)" in stage_line(
        {**record({"cosine": None, "fired": False}), "stage": 1}, 3)
    assert stage_line(record(None, "vanilla"), 3).startswith("stage 2/3 last [vanilla]  scores")
