"""slice_trl.hub against the loopback Hub (tests/hub_server.py) with the real huggingface_hub,
datasets and PEFT: adapter conversion, publishing a 2-stage run (one commit per stage, a final one
with GP/IP, none when nothing changed), the card (licence, model-index, x100 scores), no local
paths, fresh-process loading, failures, idempotency, token hygiene, and `ls` / `pull`. The
publishing tests run against both modes of the test Hub (`hub_modes`: full and strict)."""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import uuid
import zlib
from pathlib import Path

import conftest_hub  # noqa: F401  (starts the server and sets HF_ENDPOINT before the imports below)
from conftest_hub import TEST_HUB_TOKEN, hub, hub_modes, hub_repo_name  # noqa: F401  (fixtures)

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from safetensors.torch import load_file

from slice_trl import hub as shub
from slice_trl.evaluation.general import summarize
from slice_trl.utils.testing import tiny_llama, tiny_tokenizer

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
IDS = torch.tensor([[5, 17, 99, 3, 42, 250, 7, 11, 64, 128]])
TASKS = ["alpha_task", "beta_task"]
REPO_ROOT = Path(__file__).resolve().parents[1]


def _lora(rslora: bool) -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=2 if rslora else 8, use_rslora=rslora, target_modules=TARGETS,
                      lora_dropout=0.0, task_type="CAUSAL_LM")


def _absorb_nonzero_init(peft_model, name: str, gen: torch.Generator) -> None:
    """What a SLICE/LoRA-GA/LoRAM initialiser does: non-zero A0, B0 and base -= scaling * B0 @ A0."""
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer) and name in module.lora_A:
                A, B = module.lora_A[name].weight, module.lora_B[name].weight
                A0 = torch.randn(A.shape, generator=gen) * 0.2
                B0 = torch.randn(B.shape, generator=gen) * 0.2
                module.get_base_layer().weight -= module.scaling[name] * (B0 @ A0)
                A.copy_(A0)
                B.copy_(B0)


def convert_stage_adapter(peft_model, adapter_name: str, init_dir: Path, out_dir: Path) -> Path:
    """The in-memory reference of `slice_trl.hub.convert_adapter_files`: PEFT's own conversion,
    ``save_pretrained(..., path_initial_model_for_weight_conversion=...)`` of the live adapter, into
    ``out_dir`` (adapter_config.json + adapter_model.safetensors only). PEFT overwrites the init
    adapter's config and deletes the adapter it loads from there, so it gets a staged copy under a
    unique name (with ``init_lora_weights`` True: PEFT refuses or re-runs a named initialisation);
    the active adapter and train/eval mode are restored afterwards."""
    init_dir = Path(init_dir)
    if not (init_dir / "adapter_config.json").is_file():  # PEFT saves a non-"default" adapter in a sub-folder
        (init_dir,) = [p for p in init_dir.iterdir() if (p / "adapter_config.json").is_file()]
    was_training, active = peft_model.training, list(peft_model.active_adapters)
    with tempfile.TemporaryDirectory() as tmp:
        init_name = f"reference_init_{uuid.uuid4().hex[:8]}"
        staged = Path(tmp) / init_name
        staged.mkdir()
        shutil.copyfile(init_dir / "adapter_model.safetensors", staged / "adapter_model.safetensors")
        init_cfg = json.loads((init_dir / "adapter_config.json").read_text())
        (staged / "adapter_config.json").write_text(json.dumps({**init_cfg, "init_lora_weights": True}))
        save_dir = Path(tmp) / "converted"
        try:
            peft_model.save_pretrained(str(save_dir), selected_adapters=[adapter_name],
                                       path_initial_model_for_weight_conversion=str(staged))
        finally:
            if init_name in peft_model.peft_config:
                peft_model.delete_adapter(init_name)
            if list(peft_model.active_adapters) != active:
                peft_model.base_model.set_adapter(active if len(active) > 1 else active[0])
            peft_model.train(was_training)
        produced = save_dir if adapter_name == "default" else save_dir / adapter_name
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True)
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            shutil.copyfile(produced / name, out_dir / name)
    return out_dir


def _fake_training(peft_model, name: str, gen: torch.Generator) -> None:
    with torch.no_grad():
        for module in peft_model.modules():
            if isinstance(module, LoraLayer) and name in module.lora_A:
                for w in (module.lora_A[name].weight, module.lora_B[name].weight):
                    w += torch.randn(w.shape, generator=gen) * 0.05


def _logits(model) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(IDS).logits.clone()


def _png() -> bytes:
    """A valid 1x1 PNG (stands in for the trainer's heatmap)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00\xff\x00\x00")) + chunk(b"IEND", b""))


def _json_default(obj):
    return sorted(obj) if isinstance(obj, set) else str(obj)


@pytest.fixture(scope="module")
def built_run(tmp_path_factory):
    """A finished 2-stage run in the trainer's layout, built with a tiny Llama and PEFT: absorbed
    non-zero init, "trained" (perturbed) adapters, merged between stages. Stage 1 has its
    adapter_original_base (PEFT conversion); stage 2 does not (push falls back to the file one)."""
    root = tmp_path_factory.mktemp("built_run")
    base_dir = root / "base"
    tiny_llama(seed=0).save_pretrained(base_dir)
    tiny_tokenizer().save_pretrained(base_dir)
    out = root / "run"
    lora = _lora(rslora=True)
    model = tiny_llama(seed=0)
    gen = torch.Generator().manual_seed(1234)
    expected = {}
    for k, task in enumerate(TASKS, start=1):
        name = "default" if k == 1 else f"stage{k}"  # PEFT saves non-default adapters in a sub-folder
        pm = get_peft_model(model, copy.deepcopy(lora), adapter_name=name)
        before = _logits(pm)
        _absorb_nonzero_init(pm, name, gen)
        assert torch.allclose(_logits(pm), before, atol=1e-5)  # absorption keeps the function
        sdir = out / "stages" / f"{k:02d}-{task}"
        pm.save_pretrained(sdir / "init_adapter", selected_adapters=[name])
        _fake_training(pm, name, gen)
        pm.save_pretrained(sdir / "adapter", selected_adapters=[name])
        if k == 1:
            convert_stage_adapter(pm, name, sdir / "init_adapter", sdir / "adapter_original_base")
        expected[k] = _logits(pm)
        model = pm.merge_and_unload()
        (sdir / "record.json").write_text(json.dumps({"stage": k, "task": task, "init": {"method": "slice"}}))
    (out / "run.json").write_text(json.dumps({
        "base_model": str(base_dir), "task_names": TASKS, "seed": 0,
        "recipe": {"init": {"method": "slice", "c": 1.0}, "learning_rate": 1e-4},
        "lora": json.loads(json.dumps(lora.to_dict(), default=_json_default)),
    }))
    (out / "results.json").write_text(json.dumps({
        "task_names": TASKS, "R": [[0.5, None], [0.25, 0.75]], "AP": 0.625, "FP": 0.5, "forgetting": 0.125,
        "Last": 0.5, "FWT": None}))  # two of the field's metrics (docs/benchmarks.md); FWT not measured
    (out / "results_heatmap.png").write_bytes(_png())
    return {"out": out, "base_dir": base_dir, "expected": expected}


@pytest.fixture
def run(built_run, tmp_path):
    """A private copy of the built run (pushing writes pushed.json and stage 2's converted adapter)."""
    out = tmp_path / "run"
    shutil.copytree(built_run["out"], out)
    return {**built_run, "out": out}


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------- conversion
@pytest.mark.parametrize("rslora", [False, True])
def test_convert_stage_adapter_reproduces_logits_on_fresh_base(tmp_path, rslora):
    pm = get_peft_model(tiny_llama(seed=0), _lora(rslora), adapter_name="task_x")
    gen = torch.Generator().manual_seed(7)
    _absorb_nonzero_init(pm, "task_x", gen)
    pm.save_pretrained(tmp_path / "init_adapter", selected_adapters=["task_x"])
    _fake_training(pm, "task_x", gen)
    expected = _logits(pm)
    pm.train()

    out = convert_stage_adapter(pm, "task_x", tmp_path / "init_adapter", tmp_path / "adapter_original_base")
    # the live model is as it was: same adapters, active adapter, mode and trainable parameters
    assert list(pm.peft_config) == ["task_x"] and pm.active_adapters == ["task_x"] and pm.training
    assert all(p.requires_grad for n, p in pm.named_parameters() if "lora_" in n)
    assert sorted(os.listdir(out)) == ["adapter_config.json", "adapter_model.safetensors"]
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 8 and cfg["lora_alpha"] == pytest.approx(2 * 2**0.5 if rslora else 16)

    fresh = PeftModel.from_pretrained(tiny_llama(seed=0), out)  # the ORIGINAL base, plain PEFT
    assert (_logits(fresh) - expected).abs().max() < 1e-5

    # the pure-safetensors conversion gives the same adapter
    pm.save_pretrained(tmp_path / "adapter", selected_adapters=["task_x"])
    files = shub.convert_adapter_files(tmp_path / "adapter", tmp_path / "init_adapter", tmp_path / "files")
    a, b = load_file(out / "adapter_model.safetensors"), load_file(files / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    cfg_files = json.loads((files / "adapter_config.json").read_text())
    assert (cfg_files["r"], cfg_files["lora_alpha"]) == (cfg["r"], cfg["lora_alpha"])

    bad = json.loads((tmp_path / "adapter" / "task_x" / "adapter_config.json").read_text())
    (tmp_path / "adapter" / "task_x" / "adapter_config.json").write_text(json.dumps({**bad, "use_dora": True}))
    with pytest.raises(ValueError, match="use_dora"):
        shub.convert_adapter_files(tmp_path / "adapter", tmp_path / "init_adapter", tmp_path / "dora")


# ----------------------------------------------------------------------------- publishing + loading
TEXT_SUFFIXES = (".json", ".yaml", ".md")


def _local_paths_in(hub, repo, *paths) -> list[str]:
    """Published text files that contain any of ``paths`` (folders of the machine that published)."""
    return [f for f in hub.list_files(repo) if f.endswith(TEXT_SUFFIXES)
            and any(str(p).encode() in hub.read_file(repo, f) for p in paths)]


def _card_yaml(hub, repo) -> dict:
    import yaml

    text = hub.read_file(repo, "README.md").decode()
    return yaml.safe_load(text.split("---")[1])


def _lm_eval_scores(gp: float, ip: float) -> dict:
    """What `slice_trl.evaluation.evaluate_general` returns for one benchmark."""
    entry = {"metric": "acc_norm,none", "n": 8}
    return {"GP": gp, "IP": ip, "zero_shot": {"arc_easy": {**entry, "score": gp, "num_fewshot": 0}},
            "few_shot": {"arc_easy": {**entry, "score": ip, "num_fewshot": 5}}, "tasks": ["arc_easy"], "limit": None}


# results.json["general"] exactly as the trainer writes it after the last stage (final, base, change)
GENERAL = summarize(_lm_eval_scores(0.4, 0.5), _lm_eval_scores(0.45, 0.5), stage=2)


def test_push_and_load_stages_in_fresh_process(hub_modes, hub_repo_name, run, tmp_path, tmp_path_factory):
    hub, out = hub_modes, run["out"]
    repo = f"{hub.orgs[0]}/{hub_repo_name}"
    report = shub.push_pending(out, repo, private=True)
    assert report.ok and report.pushed == [1, 2] and len(report.commits) == 2, str(report)
    assert report.final == "up to date"  # the stage-2 commit already carried the run files
    assert hub.is_private(repo)
    commits = HfApi().list_repo_commits(repo)
    assert [c.title for c in commits] == ["Stage 2/2: beta_task", "Stage 1/2: alpha_task", "initial commit"]
    files = set(hub.list_files(repo))
    for folder in ("stage-01-alpha_task", "stage-02-beta_task"):
        assert {f"{folder}/adapter_config.json", f"{folder}/adapter_model.safetensors", f"{folder}/record.json"} <= files
    assert {"README.md", "run.json", "recipe.yaml", "results.json", "results_heatmap.png"} <= files
    assert not any("init_adapter" in f or f.endswith("/adapter/adapter_model.safetensors") for f in files)
    assert (out / "stages" / "02-beta_task" / "adapter_original_base" / "adapter_model.safetensors").is_file()
    marker = json.loads((out / "pushed.json").read_text())[f"{repo}@main"]
    assert marker["head"] == hub.head(repo) and set(marker["stages"]) == {"1", "2"}

    # no path of this machine in any published file: the base model was a local folder
    assert _local_paths_in(hub, repo, tmp_path_factory.getbasetemp(), run["base_dir"], out) == []
    adapter_cfg = json.loads(hub.read_file(repo, "stage-01-alpha_task/adapter_config.json"))
    assert adapter_cfg["base_model_name_or_path"] is None  # a local checkpoint has no Hub id
    assert adapter_cfg["target_modules"] == sorted(TARGETS)
    run_json = json.loads(hub.read_file(repo, "run.json"))
    assert run_json["base_model"] == "<local path>/base" and run_json["lora"]["target_modules"] == sorted(TARGETS)

    card = ModelCard.load(repo)
    assert card.data.library_name == "peft" and {"continual-learning", "lora", "slice"} <= set(card.data.tags)
    assert card.data.base_model is None and card.data.license == "unknown"
    for needle in ("stage-02-beta_task", "load_stage", "merge_and_unload", "results_heatmap.png",
                   "| AP | 62.5 |", "| FP | 50.0 |", "| Forgetting | +12.5 |", "| 2 (beta_task) | 25.0 | 75.0 |",
                   "| Last (SAPT's AP) | 50.0 |", "| FWT | n/a |",  # the field's metrics; FWT not measured
                   "| target modules | " + ", ".join(sorted(TARGETS)) + " |", "**License:** unknown",
                   f"python -m slice_trl.hub pull {repo} --stage 2 --merge"):
        assert needle in card.text, needle
    assert "GP" not in card.text.split("## Loading")[0]  # no GP/IP measured: no GP/IP section
    results = {(r.dataset_name, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert results[("alpha_task", "score")] == 25.0 and results[("beta_task", "score")] == 75.0
    assert results[("continual sequence of 2 tasks", "ap")] == 62.5

    with pytest.raises(ValueError, match="local checkpoint"):  # run.json cannot name a folder of this machine
        shub.load_stage(repo, 1)
    result = tmp_path / "logits.pt"
    code = textwrap.dedent(f"""
        import torch
        from peft import PeftModel
        from transformers import AutoModelForCausalLM
        from slice_trl.hub import load_stage
        repo, ids, out, base = {repo!r}, torch.tensor({IDS.tolist()}), {{}}, {str(run["base_dir"])!r}
        for k in (1, 2):
            model, tok = load_stage(repo, k, base_model=base)
            with torch.no_grad():
                out[f"load_stage_{{k}}"] = model(ids).logits
        # plain PEFT, as in the model card: stage 1 on the original base, then stage 2 on top
        model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, repo, subfolder="stage-01-alpha_task").eval()
        with torch.no_grad():
            out["peft_1"] = model(ids).logits
        model = PeftModel.from_pretrained(model.merge_and_unload(), repo, subfolder="stage-02-beta_task").eval()
        with torch.no_grad():
            out["peft_2"] = model(ids).logits
        torch.save(out, {str(result)!r})
    """)
    env = dict(os.environ, HF_HOME=str(tmp_path / "hf_home"), PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert TEST_HUB_TOKEN not in proc.stdout + proc.stderr
    got = torch.load(result, weights_only=True)
    for k in (1, 2):
        assert (got[f"load_stage_{k}"] - run["expected"][k]).abs().max() < 1e-4
        assert (got[f"peft_{k}"] - run["expected"][k]).abs().max() < 1e-4


def test_final_commit_with_gp_ip_then_up_to_date(hub_modes, hub_repo_name, run):
    hub, out = hub_modes, run["out"]
    repo = f"{hub.user}/{hub_repo_name}"
    assert shub.push_pending(out, repo).pushed == [1, 2]
    assert len(hub.commit_ids(repo)) == 3  # initial + one per stage

    results = json.loads((out / "results.json").read_text())
    (out / "results.json").write_text(json.dumps({**results, "general": GENERAL}))  # what the trainer adds last
    (out / "base").mkdir()
    (out / "base" / "scores.json").write_text(json.dumps({"GP": 0.45, "IP": 0.5, "dir": str(out)}))
    report = shub.push_pending(out, repo)
    assert report.ok and report.up_to_date == [1, 2] and report.final == "pushed" and len(report.commits) == 1
    titles = [c.title for c in HfApi().list_repo_commits(repo)]
    assert titles[0] == "Final results: GP/IP and model card" and len(titles) == 4

    data = _card_yaml(hub, repo)
    metrics = {m["type"]: m["value"] for entry in data["model-index"][0]["results"] for m in entry["metrics"]}
    assert metrics["gp"] == 40.0 and metrics["ip"] == 50.0
    card = hub.read_file(repo, "README.md").decode()
    assert "## General ability (GP / IP)" in card
    assert "| GP | 40.0 | 45.0 | -5.0 |" in card and "| IP | 50.0 | 50.0 | 0.0 |" in card  # final, base, change x100
    assert "| arc_easy | acc_norm | 40.0 | 50.0 | 45.0 | 50.0 |" in card
    assert json.loads(hub.read_file(repo, "results.json"))["general"]["GP"] == 0.4
    assert json.loads(hub.read_file(repo, "base/scores.json"))["dir"] == "<local path>/run"

    head = hub.head(repo)
    hub.clear_log()
    again = shub.push_pending(out, repo)
    assert again.ok and again.up_to_date == [1, 2] and not again.pushed and again.final == "up to date"
    assert "is up to date" in str(again) and "Published" not in str(again)
    assert hub.head(repo) == head and not hub.requests_matching("POST", "/commit/")


def test_a_commit_reads_the_run_facts_once(hub, hub_repo_name, run, monkeypatch):
    from slice_trl.utils.run_folder import RunFolder

    reads, read_run = [], RunFolder.read_run
    monkeypatch.setattr(RunFolder, "read_run", lambda self: reads.append(self.root) or read_run(self))
    report = shub.push_pending(run["out"], f"{hub.user}/{hub_repo_name}")
    assert report.pushed == [1, 2] and report.final == "up to date"
    assert reads == [run["out"]] * 3  # one read per commit tried: stage 1, stage 2, the run-level files


def test_push_survives_failures_and_resumes_without_duplicates(hub_modes, hub_repo_name, run):
    hub, out = hub_modes, run["out"]
    repo = f"{hub.user}/{hub_repo_name}"
    before = _snapshot(out)

    hub.set_down(True)  # the Hub is unreachable: nothing raises, nothing on disk changes
    report = shub.push_pending(out, repo)
    assert set(report.failed) == {0, 1, 2} and not report.pushed and not report.ok and not report.unverified
    assert _snapshot(out) == before and not hub.repo_exists(repo)
    hub.set_down(False)

    assert shub.push_stage(out, 1, repo) is not None
    hub.set_down(True)  # stage 1 is on the Hub (pushed.json says so): not reported as pending
    report = shub.push_pending(out, repo)
    assert set(report.failed) == {0, 2} and set(report.unverified) == {1} and not report.ok
    assert "stage 1 was pushed earlier" in str(report) and "stage 2 NOT pushed" in str(report)
    hub.set_down(False)

    hub.fail_next(1, status=500, path_contains="/commit/")  # stage 2's commit fails (after its LFS upload)
    report = shub.push_pending(out, repo)
    assert report.up_to_date == [1] and set(report.failed) == {2} and not report.pushed
    assert "Injected failure" in report.failed[2]  # the cause, not only the exception's class
    assert not any(f.startswith("stage-02") for f in hub.list_files(repo))

    hub.clear_log()
    report = shub.push_pending(out, repo)  # the next call pushes exactly the missing stage
    assert report.ok and report.pushed == [2] and report.up_to_date == [1] and len(report.commits) == 1
    assert len(hub.requests_matching("POST", "/commit/")) == 1
    assert any(f.startswith("stage-02-beta_task/") for f in hub.list_files(repo))

    head, n_commits = hub.head(repo), len(hub.commit_ids(repo))
    hub.clear_log()
    for _ in range(2):  # pushing again changes nothing
        report = shub.push_pending(out, repo)
        assert report.ok and report.up_to_date == [1, 2] and not report.pushed and not report.commits
        assert shub.push_stage(out, 2, repo) is None
    background = shub.push_pending_in_background(out, repo).result(timeout=120)
    assert background.ok and background.up_to_date == [1, 2]
    assert hub.head(repo) == head and len(hub.commit_ids(repo)) == n_commits
    assert not hub.requests_matching("POST", "/commit/")

    with pytest.raises(ValueError, match="not finished"):
        shub.push_stage(out, 3, repo)


def test_push_to_branch_and_load_peft_model_in_process(hub_modes, hub_repo_name, run):
    hub, out = hub_modes, run["out"]
    repo = f"{hub.user}/{hub_repo_name}"
    shub.push_stage(out, 1, repo, revision="runs")  # creates the branch
    assert hub.list_files(repo) == [".gitattributes"]  # main untouched
    assert "stage-01-alpha_task/adapter_model.safetensors" in hub.list_files(repo, revision="runs")
    model, tokenizer = shub.load_stage(repo, 1, revision="runs", merge=False, base_model=str(run["base_dir"]))
    assert isinstance(model, PeftModel) and tokenizer.pad_token is not None
    assert (_logits(model) - run["expected"][1]).abs().max() < 1e-4
    with pytest.raises(ValueError, match="not published"):
        shub.load_stage(repo, 2, revision="runs")


def test_token_never_written_or_logged(hub_modes, hub_repo_name, run, caplog, capsys):
    hub, out = hub_modes, run["out"]
    repo = f"{hub.user}/{hub_repo_name}"
    caplog.set_level(logging.DEBUG)
    hub.fail_next(1, status=500, path_contains="/commit/")
    first = shub.push_pending(out, repo, token=TEST_HUB_TOKEN)  # explicit token: must not leak either
    assert set(first.failed) == {1, 2} and "not attempted" in first.failed[2]
    assert any("stays pending" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert shub.push_pending(out, repo).ok  # token from HF_TOKEN

    secret = TEST_HUB_TOKEN.encode()
    leaks = [name for name, data in _snapshot(out).items() if secret in data]
    assert leaks == []
    assert [f for f in hub.list_files(repo) if secret in hub.read_file(repo, f)] == []
    captured = capsys.readouterr()
    assert TEST_HUB_TOKEN not in caplog.text + captured.out + captured.err
    assert TEST_HUB_TOKEN not in json.dumps(first.failed)
    assert hub.find_in_requests(TEST_HUB_TOKEN) == []  # only ever in the Authorization header
    assert set(h for h in hub.authorization_headers() if h) == {f"Bearer {TEST_HUB_TOKEN}"}

    # a recipe that carries credentials is published redacted
    run_json = json.loads((out / "run.json").read_text())
    run_json["recipe"].update(hub_token=TEST_HUB_TOKEN, env={"HF_TOKEN": TEST_HUB_TOKEN, "HF_HOME": "/x"})
    (out / "run.json").write_text(json.dumps(run_json))
    assert shub.push_pending(out, repo).ok
    for name in ("run.json", "recipe.yaml", "README.md"):
        assert secret not in hub.read_file(repo, name)
    assert b"<redacted>" in hub.read_file(repo, "recipe.yaml") and b"HF_HOME: <local path>/x" in hub.read_file(repo, "recipe.yaml")


def test_ls_and_pull_from_the_command_line(hub, hub_repo_name, run, tmp_path):
    out = run["out"]
    repo = f"{hub.user}/{hub_repo_name}"
    assert shub.push_pending(out, repo).ok
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HOME=str(tmp_path / "hf_home"))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "slice_trl.hub", *args], env=env, capture_output=True, text=True,
                              timeout=240, cwd=str(tmp_path))

    ls = cli("ls", repo)
    assert ls.returncode == 0, ls.stderr[-2000:]
    assert "2 of 2 stage(s) published" in ls.stdout
    assert "stage 2: beta_task" in ls.stdout and "stage-02-beta_task/" in ls.stdout
    assert "AP 62.5" in ls.stdout and "FP 50.0" in ls.stdout  # the R table's footer, x100

    merged = tmp_path / "merged"
    pulled = cli("pull", repo, "--stage", "2", "--out", str(tmp_path / "pulled"), "--merge", str(merged),
                 "--base-model", str(run["base_dir"]))
    assert pulled.returncode == 0, pulled.stderr[-2000:]
    assert (tmp_path / "pulled" / "stage-02-beta_task" / "adapter_model.safetensors").is_file()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32)  # a plain checkpoint
    assert AutoTokenizer.from_pretrained(merged).pad_token is not None
    assert (_logits(model) - run["expected"][2]).abs().max() < 1e-4

    missing = cli("pull", repo, "--stage", "3")
    assert missing.returncode == 2 and "stage(s) [3] are not published" in missing.stderr
    assert "Traceback" not in missing.stderr
    nowhere = cli("ls", f"{hub.user}/no-such-run")
    assert nowhere.returncode == 2 and f"{hub.user}/no-such-run not found on {hub.url}" in nowhere.stderr
    assert "Traceback" not in nowhere.stderr


def test_push_task_splits_dataset_repo(hub_modes, hub_repo_name, tmp_path):
    from datasets import Dataset, load_dataset

    from slice_trl.tasks.base import Task

    hub = hub_modes

    def task(name, n, metric):
        rows = {"prompt": [f"{name} question {i}" for i in range(n)], "completion": [f"answer {i}" for i in range(n)]}
        return Task(name, Dataset.from_dict(rows), Dataset.from_dict({k: v[:2] for k, v in rows.items()}), metric,
                    {"source": "test", "shortened": 1, "path": str(tmp_path / "data.json")})

    tasks = [task("task088_identify_typo_verification", 5, "exact_match"), task("task181_outcome_extraction", 4, "rougeL")]
    repo = shub.push_task_splits(tasks, f"{hub.orgs[0]}/{hub_repo_name}")
    loaded = load_dataset(repo, "task181_outcome_extraction", cache_dir=str(tmp_path / "ds"))
    assert loaded["train"]["prompt"] == tasks[1].train["prompt"] and loaded["eval"].num_rows == 2
    readme = hub.read_file(repo, "README.md", repo_type="dataset").decode()
    assert "config_name: task088_identify_typo_verification" in readme  # datasets' configs kept
    assert "| 2 | `task181_outcome_extraction` | 4 | 2 | rougeL |" in readme and "continual-learning" in readme
    assert str(tmp_path) not in readme and "<local path>/data.json" in readme

    n_commits = len(hub.commit_ids(repo, repo_type="dataset"))
    shub.push_task_splits(tasks, repo)  # unchanged data: no new commit
    assert len(hub.commit_ids(repo, repo_type="dataset")) == n_commits
