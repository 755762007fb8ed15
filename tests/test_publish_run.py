"""Hub round trip with the REAL trainer, through `slice_trl.run.run()`, against the loopback Hub
(in both of its modes, full and strict): the task-splits push fails at the start (the splits are
kept), a 2-stage tiny sequence publishes stage 1 while it runs, the Hub is down from stage 2's push
to the end (the run finishes, nothing local is lost; the final GP/IP push fails too), `--push-only`
exits non-zero while the Hub is down, then pushes the splits and the missing stage with GP/IP in
the card, and a second `--push-only` makes no commit and says "up to date". The published stages
reload in a fresh process to the live end-of-stage logits; no token and no local path is
published."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import conftest_hub  # noqa: F401  (starts the loopback Hub and sets HF_ENDPOINT before the imports below)
import pytest
import torch
from conftest_hub import TEST_HUB_TOKEN

from slice_trl import hub as shub
from slice_trl import run as run_mod
from slice_trl.cli.recipe import load_recipe
from slice_trl.utils.testing import tiny_llama, tiny_recipe_yaml, tiny_tokenizer
from slice_trl.trainer.continual_sft_trainer import ContinualSFTTrainer

pytestmark = pytest.mark.usefixtures("restore_root_logger")

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE_TEXT = "Words: fox cup tree moon\nSay the first word."


# lm-eval's scores are not computed here (what is tested is where GP/IP go): `evaluate_general`
# answers these, for the base model (first call) and after the last stage (second call); the
# trainer turns them into results.json["general"] (final, base, change).
def _lm_eval_scores(gp: float, ip: float) -> dict:
    entry = {"metric": "acc_norm,none", "n": 8}
    return {"GP": gp, "IP": ip, "zero_shot": {"slice_smoke_choice": {**entry, "score": gp, "num_fewshot": 0}},
            "few_shot": {"slice_smoke_choice": {**entry, "score": ip, "num_fewshot": 5}},
            "tasks": ["slice_smoke_choice"], "limit": None}


BASE_SCORES, FINAL_SCORES = _lm_eval_scores(0.3, 0.5), _lm_eval_scores(0.25, 0.5)


def _write_recipe(root: Path, base: Path, repo: str, dataset_repo: str) -> Path:
    path = root / "publish.yaml"
    path.write_text(tiny_recipe_yaml(base, root / "run", learning_rate="5.0e-3", extra=f"""\
push_repo_id: {repo}
push_dataset_repo_id: {dataset_repo}
"""))  # the token: HF_TOKEN of the environment (conftest_hub); hub_token is not a recipe key (issue 27)
    return path


@pytest.fixture(scope="module", params=conftest_hub.HUB_MODES)
def published_run(request, tmp_path_factory):
    """Run the recipe once per Hub mode. The dataset repo cannot be created (the splits push
    fails); stage 1 is published by the after-stage hook; the Hub is down from stage 2's push to
    the end of the run. Records the live model's logits on a probe at the end of each stage."""
    server = conftest_hub.start_test_hub()
    server.reset_faults()
    server.strict = request.param == "strict"
    root = tmp_path_factory.mktemp("publish")
    base = root / "tiny-llama"
    tiny_llama(seed=5).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    repo = f"{server.user}/run-{uuid.uuid4().hex[:8]}"
    dataset_repo = f"{server.orgs[0]}/splits-{uuid.uuid4().hex[:8]}"
    recipe_path = _write_recipe(root, base, repo, dataset_repo)
    probe = torch.tensor([tiny_tokenizer()(PROBE_TEXT)["input_ids"]])
    state = {"logits": {}, "hub_files_after_stage": {}}

    class Recording(ContinualSFTTrainer):
        def evaluate_seen_tasks(self, t):
            self.model.eval()
            with torch.no_grad():
                state["logits"][t + 1] = self.model(input_ids=probe).logits.detach().clone()
            return super().evaluate_seen_tasks(t)

        def after_stage(self, t, record):
            if t == 1:  # the Hub is down from stage 2's push to the end of the run
                server.set_down(True)
            super().after_stage(t, record)
            state["hub_files_after_stage"][t + 1] = set(server.list_files(repo)) if server.repo_exists(repo) else set()

    def evaluate_general(model, tokenizer, cfg, accelerator=None):
        state["general_calls"] = state.get("general_calls", 0) + 1
        return BASE_SCORES if state["general_calls"] == 1 else FINAL_SCORES

    records = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = lambda record: records.append(record)
    root_logger = logging.getLogger()
    old_level, old_threads = root_logger.level, torch.get_num_threads()
    root_logger.addHandler(handler)
    root_logger.setLevel(logging.DEBUG)
    torch.set_num_threads(1)  # tiny model: threads only add contention on a shared CPU
    stdout, stderr = io.StringIO(), io.StringIO()
    try:
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            mp.setattr("slice_trl.trainer.continual_sft_trainer.ContinualSFTTrainer", Recording)
            mp.setattr("slice_trl.trainer.continual_sft_trainer.evaluate_general", evaluate_general)
            recipe = load_recipe(recipe_path)
            # GP/IP of the base model and after the last stage (a task that resolves offline: the run
            # checks every benchmark before the model loads)
            recipe.training.evaluation.lm_eval_tasks = ["slice_smoke_choice"]
            # the dataset repo cannot be created: the task splits push fails before training
            server.fail_next(10**6, status=503, path_contains="/api/repos/create", body_contains="dataset")
            out = run_mod.run(recipe)
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
        torch.set_num_threads(old_threads)
        server.reset_faults()
    log_text = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in records)
    yield {
        "root": root, "base": base, "repo": repo, "dataset_repo": dataset_repo, "recipe": recipe_path,
        "out_dir": root / "run", "output": out, "general_calls": state.get("general_calls", 0), "mode": request.param,
        "probe": probe, "logits": state["logits"], "hub_files_after_stage": state["hub_files_after_stage"],
        "log": log_text + "\n" + stdout.getvalue() + "\n" + stderr.getvalue(),
        "token_in_requests": server.find_in_requests(TEST_HUB_TOKEN),
    }
    server.strict = False


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def _card_yaml(text: str) -> dict:
    import yaml

    return yaml.safe_load(text.split("---")[1])


def test_run_survives_hub_failure_and_push_only_pushes_the_rest(published_run, hub, capsys):
    run = published_run
    hub.strict = run["mode"] == "strict"
    repo, out_dir, dataset_repo = run["repo"], run["out_dir"], run["dataset_repo"]
    # stage 1 was published by the after-stage hook while the run went on; stage 2's push failed
    after1, after2 = run["hub_files_after_stage"][1], run["hub_files_after_stage"][2]
    assert {"stage-01-first/adapter_model.safetensors", "stage-01-first/adapter_config.json",
            "stage-01-first/record.json", "run.json", "README.md", "results.json"} <= after1
    assert not any(f.startswith("stage-02") for f in after1 | after2)
    assert "Hub push incomplete" in run["log"] and "--push-only" in run["log"]
    # the failed splits push names its cause and is kept for a retry; the card does not name a missing dataset
    assert f"Could not push the task splits to {dataset_repo}: HfHubHTTPError" in run["log"]
    assert "Injected failure" in run["log"]  # the server's own message, not only an exception class
    assert (out_dir / "hub_pending" / "task_splits" / "tasks.json").is_file()
    assert not hub.repo_exists(dataset_repo, repo_type="dataset")
    assert "datasets" not in _card_yaml(hub.read_file(repo, "README.md").decode())

    # the run finished, computed GP/IP for the base model and after the last stage, and nothing local is lost
    assert run["output"].results.completed == 2 and run["general_calls"] == 2
    general = json.loads((out_dir / "results.json").read_text())["general"]
    assert (general["GP"], general["IP"], general["base"]["GP"], general["base"]["IP"]) == (0.25, 0.5, 0.3, 0.5)
    assert general["change"] == {"GP": 0.25 - 0.3, "IP": 0.0}
    for name in ("01-first", "02-last"):
        for sub in ("record.json", "adapter/adapter_model.safetensors", "init_adapter/adapter_model.safetensors",
                    "adapter_original_base/adapter_model.safetensors"):
            assert (out_dir / "stages" / name / sub).is_file(), (name, sub)
    before = _snapshot(out_dir)

    # --push-only while the Hub is down: exits non-zero; stage 1 is known to be pushed, stage 2 is not
    n_commits = len(hub.commit_ids(repo))
    capsys.readouterr()
    hub.set_down(True)
    assert run_mod.main([str(run["recipe"]), "--push-only"]) == 1
    hub.set_down(False)
    printed = capsys.readouterr().out
    assert "stage 1 was pushed earlier" in printed and "stage 2 NOT pushed" in printed
    assert "task splits NOT pushed" in printed and len(hub.commit_ids(repo)) == n_commits

    # --push-only (the CLI flag) publishes the splits, then exactly the missing stage with GP/IP, in one commit
    assert run_mod.main([str(run["recipe"]), "--push-only"]) == 0
    printed = capsys.readouterr().out
    assert "pushed stage(s) [2] in 1 commit(s)" in printed and f"task splits: pushed to {dataset_repo}" in printed
    files = set(hub.list_files(repo))
    assert {"stage-02-last/adapter_model.safetensors", "stage-02-last/adapter_config.json",
            "stage-02-last/record.json"} <= files
    assert len(hub.commit_ids(repo)) == n_commits + 1 == 1 + 2  # the initial commit + one per stage
    after = _snapshot(out_dir)
    changed = {k for k in before if after.get(k) != before[k]}
    assert set(after) <= set(before) | {"pushed.json"}
    assert changed <= {"pushed.json"} | {k for k in before if k.startswith("hub_pending/")}  # pushed splits removed
    assert not (out_dir / "hub_pending").exists()
    assert hub.list_files(dataset_repo, repo_type="dataset")  # the splits are there now
    results = json.loads(hub.read_file(repo, "results.json"))
    assert results["completed"] == 2 and results["general"]["GP"] == 0.25
    card = hub.read_file(repo, "README.md").decode()
    data = _card_yaml(card)
    assert data["datasets"] == [dataset_repo]
    metrics = {m["type"]: m["value"] for entry in data["model-index"][0]["results"] for m in entry["metrics"]}
    assert metrics["gp"] == 25.0 and metrics["ip"] == 50.0
    assert "| GP | 25.0 | 30.0 | -5.0 |" in card

    # pushing again makes no commit and says so (run() with push_only=True, as the flag does)
    head, n_commits = hub.head(repo), len(hub.commit_ids(repo))
    hub.clear_log()
    report = run_mod.run(load_recipe(run["recipe"]), push_only=True)
    assert report.ok and report.up_to_date == [1, 2] and not report.pushed
    assert "is up to date" in capsys.readouterr().out
    assert hub.head(repo) == head and len(hub.commit_ids(repo)) == n_commits
    assert not hub.requests_matching("POST", "/commit/")


def test_published_stages_reload_in_a_fresh_process(published_run, tmp_path):
    run = published_run
    repo = run["repo"]
    assert shub.push_pending(run["out_dir"], repo).ok  # idempotent: whichever test runs first
    live = run["logits"]
    assert set(live) == {1, 2}
    assert (live[1] - live[2]).abs().max() > 1e-3  # stage 2 changed the model: the check is not vacuous
    with torch.no_grad():
        base_logits = tiny_llama(seed=5).eval()(input_ids=run["probe"]).logits
    assert (live[1] - base_logits).abs().max() > 1e-3

    result = tmp_path / "logits.pt"
    code = textwrap.dedent(f"""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        from slice_trl.hub import load_stage
        repo, probe, out = {repo!r}, torch.tensor({run["probe"].tolist()}), {{}}
        for k in (1, 2):
            model, tok = load_stage(repo, k, base_model={str(run["base"])!r})
            with torch.no_grad():
                out[f"load_stage_{{k}}"] = model(input_ids=probe).logits
        base = AutoModelForCausalLM.from_pretrained({str(run["base"])!r}, dtype=torch.float32)
        model = PeftModel.from_pretrained(base, repo, subfolder="stage-01-first").eval()
        with torch.no_grad():
            out["peft_1"] = model(input_ids=probe).logits
        torch.save(out, {str(result)!r})
    """)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(REPO_ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240,
                          cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert TEST_HUB_TOKEN not in proc.stdout + proc.stderr
    got = torch.load(result, weights_only=True)
    for k in (1, 2):
        diff = float((got[f"load_stage_{k}"] - live[k]).abs().max())
        assert diff < 1e-4, f"stage {k}: load_stage differs from the live run by {diff}"
    diff = float((got["peft_1"] - live[1]).abs().max())
    assert diff < 1e-4, f"stage 1 via plain PeftModel.from_pretrained differs by {diff}"


def test_token_and_local_paths_never_published(published_run, hub):
    run = published_run
    repo, out_dir = run["repo"], run["out_dir"]
    assert shub.push_pending(out_dir, repo).ok
    published = [f for f in hub.list_files(repo) if f.endswith((".json", ".yaml", ".md"))]
    assert "recipe.yaml" in published and "run.json" in published
    assert [f for f in published if str(run["root"]).encode() in hub.read_file(repo, f)] == []
    assert json.loads(hub.read_file(repo, "run.json"))["base_model"] == "<local path>/tiny-llama"
    secret = TEST_HUB_TOKEN.encode()
    assert [name for name, data in _snapshot(out_dir).items() if secret in data] == []
    run_json = json.loads((out_dir / "run.json").read_text())
    assert "hub_token" not in run_json["recipe"]  # the token comes from the environment only
    assert TEST_HUB_TOKEN not in run["log"]
    assert run["token_in_requests"] == []  # only ever sent in the Authorization header
    assert [f for f in hub.list_files(repo) if secret in hub.read_file(repo, f)] == []


def test_compare_reads_the_published_run_as_the_local_folder(published_run, tmp_path, monkeypatch):
    from slice_trl import compare

    run = published_run
    assert shub.push_pending(run["out_dir"], run["repo"]).ok  # idempotent: whichever test runs first
    monkeypatch.chdir(tmp_path)  # no local path of that name: RUN is the Hub repo
    remote = compare.load_run(run["repo"])
    local = compare.summarise_run(run["out_dir"])
    assert remote["complete"] and remote["R"] == local["R"] and len(remote["gate"]) == 2
    for key in ("label", "seed", "task_names", "AP", "FP", "forgetting", "gate", "timings", "n_scored", "train_loss"):
        assert remote[key] == local[key], key
    # only the JSON files are downloaded, never the adapters
    folder, records = shub.download_run_records(run["repo"], cache_dir=tmp_path / "cache")
    files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    assert files == ["base/general.json", "results.json", "run.json", "stage-01-first/record.json",
                     "stage-02-last/record.json"]
    assert [p.parent.name for p in records] == ["stage-01-first", "stage-02-last"]
    with pytest.raises(ValueError, match="neither a local path nor a readable Hub run repo"):
        compare.load_run(f"{run['repo']}-missing")
