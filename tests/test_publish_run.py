"""Hub round trip with the REAL trainer, through `slice_trl.run.run()`, against the loopback Hub:
a 2-stage tiny sequence publishes stage 1 while it runs, the Hub fails when stage 2 is published
(the run finishes, nothing local is lost), `--push-only` pushes the missing stage, pushing again
makes no commit, the published stages reload in a fresh process to the live end-of-stage logits,
and the token is never written or logged."""

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
from conftest_hub import TEST_HUB_TOKEN

import pytest
import torch

from slice_trl import hub as shub
from slice_trl import run as run_mod
from slice_trl.recipe import load_recipe
from slice_trl.testing import tiny_llama, tiny_recipe_yaml, tiny_tokenizer
from slice_trl.trainer import ContinualSFTTrainer

pytestmark = pytest.mark.usefixtures("restore_root_logger")

REPO_ROOT = Path(__file__).resolve().parents[1]
PROBE_TEXT = "Words: fox cup tree moon\nSay the first word."


def _write_recipe(root: Path, base: Path, repo: str) -> Path:
    path = root / "publish.yaml"
    path.write_text(tiny_recipe_yaml(base, root / "run", learning_rate="5.0e-3", extra=f"""\
push_repo_id: {repo}
hub_token: {TEST_HUB_TOKEN}
"""))
    return path


@pytest.fixture(scope="module")
def published_run(tmp_path_factory):
    """Run the recipe once. Stage 1 is published by the after-stage hook; the Hub is down when
    stage 2 would be published. Records the live model's logits on a probe at the end of each stage."""
    server = conftest_hub.start_test_hub()
    server.reset_faults()
    root = tmp_path_factory.mktemp("publish")
    base = root / "tiny-llama"
    tiny_llama(seed=5).save_pretrained(base)
    tiny_tokenizer().save_pretrained(base)
    repo = f"{server.user}/run-{uuid.uuid4().hex[:8]}"
    recipe_path = _write_recipe(root, base, repo)
    probe = torch.tensor([tiny_tokenizer()(PROBE_TEXT)["input_ids"]])
    state = {"logits": {}, "hub_files_after_stage": {}}

    class Recording(ContinualSFTTrainer):
        def evaluate_seen_tasks(self, t):
            self.model.eval()
            with torch.no_grad():
                state["logits"][t + 1] = self.model(input_ids=probe).logits.detach().clone()
            return super().evaluate_seen_tasks(t)

        def after_stage(self, t, record):
            if t == 1:  # the Hub fails while stage 2 is being published
                server.set_down(True)
            try:
                super().after_stage(t, record)
            finally:
                server.set_down(False)
            state["hub_files_after_stage"][t + 1] = set(server.list_files(repo)) if server.repo_exists(repo) else set()

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
            mp.setattr("slice_trl.trainer.ContinualSFTTrainer", Recording)
            out = run_mod.run(load_recipe(recipe_path))
    finally:
        root_logger.removeHandler(handler)
        root_logger.setLevel(old_level)
        torch.set_num_threads(old_threads)
        server.reset_faults()
    log_text = "\n".join(f"{r.levelname} {r.name}: {r.getMessage()}" for r in records)
    return {
        "root": root, "base": base, "repo": repo, "recipe": recipe_path, "out_dir": root / "run", "output": out,
        "probe": probe, "logits": state["logits"], "hub_files_after_stage": state["hub_files_after_stage"],
        "log": log_text + "\n" + stdout.getvalue() + "\n" + stderr.getvalue(),
        "token_in_requests": server.find_in_requests(TEST_HUB_TOKEN),
    }


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_run_survives_hub_failure_and_push_only_pushes_the_rest(published_run, hub, capsys):
    run = published_run
    repo, out_dir = run["repo"], run["out_dir"]
    # stage 1 was published by the after-stage hook while the run went on; stage 2's push failed
    after1, after2 = run["hub_files_after_stage"][1], run["hub_files_after_stage"][2]
    assert {"stage-01-first/adapter_model.safetensors", "stage-01-first/adapter_config.json",
            "stage-01-first/record.json", "run.json", "README.md", "results.json"} <= after1
    assert not any(f.startswith("stage-02") for f in after1 | after2)
    assert "Hub push incomplete" in run["log"] and "--push-only" in run["log"]

    # the run finished and nothing local is lost
    assert run["output"].results.completed == 2
    assert json.loads((out_dir / "results.json").read_text())["completed"] == 2
    for name in ("01-first", "02-last"):
        for sub in ("record.json", "adapter/adapter_model.safetensors", "init_adapter/adapter_model.safetensors",
                    "adapter_original_base/adapter_model.safetensors"):
            assert (out_dir / "stages" / name / sub).is_file(), (name, sub)
    before = _snapshot(out_dir)

    # --push-only (the CLI flag) publishes exactly the missing stage, in one commit
    n_commits = len(hub.commit_ids(repo))
    capsys.readouterr()
    assert run_mod.main([str(run["recipe"]), "--push-only"]) == 0
    assert "pushed stages [2]; up to date [1]; failed {}" in capsys.readouterr().out
    files = set(hub.list_files(repo))
    assert {"stage-02-last/adapter_model.safetensors", "stage-02-last/adapter_config.json",
            "stage-02-last/record.json"} <= files
    assert len(hub.commit_ids(repo)) == n_commits + 1
    after = _snapshot(out_dir)
    changed = {k for k in before if after.get(k) != before[k]}
    assert set(before) <= set(after) and changed <= {"pushed.json"}  # only the push marker is updated
    results = json.loads(hub.read_file(repo, "results.json"))
    assert results["completed"] == 2

    # pushing again makes no commit (run() with push_only=True, as the flag does)
    head, n_commits = hub.head(repo), len(hub.commit_ids(repo))
    hub.clear_log()
    assert run_mod.run(load_recipe(run["recipe"]), push_only=True) is None
    assert "pushed stages []; up to date [1, 2]" in capsys.readouterr().out
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
            model, tok = load_stage(repo, k)
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
    got = torch.load(result)
    for k in (1, 2):
        diff = float((got[f"load_stage_{k}"] - live[k]).abs().max())
        assert diff < 1e-4, f"stage {k}: load_stage differs from the live run by {diff}"
    diff = float((got["peft_1"] - live[1]).abs().max())
    assert diff < 1e-4, f"stage 1 via plain PeftModel.from_pretrained differs by {diff}"


def test_token_never_written_or_logged(published_run, hub):
    run = published_run
    repo, out_dir = run["repo"], run["out_dir"]
    assert shub.push_pending(out_dir, repo).ok
    secret = TEST_HUB_TOKEN.encode()
    assert secret in run["recipe"].read_bytes()  # the recipe did carry it (hub_token; env: may not set HF_TOKEN)
    assert [name for name, data in _snapshot(out_dir).items() if secret in data] == []
    run_json = json.loads((out_dir / "run.json").read_text())
    assert run_json["recipe"]["hub_token"] == "<redacted>"  # the recipe is kept, its credential is not
    assert "env" not in run_json["recipe"]
    assert TEST_HUB_TOKEN not in run["log"]
    assert run["token_in_requests"] == []  # only ever sent in the Authorization header
    assert [f for f in hub.list_files(repo) if secret in hub.read_file(repo, f)] == []
