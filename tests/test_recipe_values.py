"""Careless and hostile recipe values (issue 27): every key type-checked once against its declared
type, a flag without its value, a key given twice, settings the run would ignore or that
transformers/TRL would reject after the model loads, the Hub token, env: as an allow-list, unreadable
recipes. Each is refused by --dry-run before any model loads, in one line naming the key and value."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hostile import dry_run, refused, save_tiny_base, set_key, write_recipe
from slice_trl.utils.testing import tiny_recipe_yaml

pytestmark = pytest.mark.usefixtures("restore_root_logger")


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("base"))


# ------------------------------------------------------------------------------ one typed check per value
# (id, {top-level key: raw YAML value}, substrings of the one line)
TYPED = [
    ("lr_bool_yes", {"learning_rate": "yes"}, ["learning_rate", "True"]),
    ("lr_inf", {"learning_rate": ".inf"}, ["learning_rate", "inf"]),
    ("lr_nan", {"learning_rate": ".nan"}, ["learning_rate", "nan"]),
    ("lr_null", {"learning_rate": "null"}, ["learning_rate", "None"]),
    ("lr_string", {"learning_rate": "fast"}, ["learning_rate", "fast"]),
    ("max_steps_bool", {"max_steps": "true"}, ["max_steps", "True"]),
    ("epochs_bool", {"num_train_epochs": "yes"}, ["num_train_epochs", "True"]),
    ("batch_float", {"per_device_train_batch_size": "2.5"}, ["per_device_train_batch_size", "2.5"]),
    ("accumulation_float", {"gradient_accumulation_steps": "1.5"}, ["gradient_accumulation_steps", "1.5"]),
    ("seed_negative", {"seed": "-1"}, ["seed", "-1"]),
    ("seed_string", {"seed": "'0'"}, ["seed", "'0'"]),
    ("alpha_inf", {"lora_alpha": ".inf"}, ["lora_alpha", "inf"]),
    ("rank_bool", {"lora_r": "true"}, ["lora_r", "True"]),
    ("dropout_null", {"lora_dropout": "null"}, ["lora_dropout", "None"]),
    ("init_c_nan", {"init": "{method: slice, c: .nan, cur_steps: 1, prev_steps: 1, batch_size: 4, micro_batch_size: 4}"},
     ["init.c", "nan"]),
    ("init_steps_bool", {"init": "{method: slice, c: 1.0, cur_steps: true, prev_steps: 1, batch_size: 4, "
                                 "micro_batch_size: 4}"}, ["init.cur_steps", "True"]),
    ("eval_samples_bool", {"evaluation": "{max_samples: true, batch_size: 4, max_new_tokens: 4}"},
     ["evaluation.max_samples", "True"]),
    ("lm_eval_limit_zero", {"evaluation": "{max_samples: 4, batch_size: 4, max_new_tokens: 4, lm_eval_limit: 0}"},
     ["evaluation.lm_eval_limit", "0"]),
    ("output_dir_empty", {"output_dir": "''"}, ["output_dir", "''"]),
    ("eval_strategy_steps", {"eval_strategy": "steps"}, ["eval_strategy", "steps"]),
    ("scheduler_unknown", {"lr_scheduler_type": "cosinee"}, ["lr_scheduler_type", "cosinee"]),
    ("attn_unknown", {"attn_implementation": "flash_attention_9"}, ["attn_implementation", "flash_attention_9"]),
    ("dtype_unknown", {"dtype": "float13"}, ["dtype", "float13"]),
    ("load_in_4bit", {"load_in_4bit": "true"}, ["load_in_4bit"]),
    ("load_in_8bit", {"load_in_8bit": "true"}, ["load_in_8bit"]),
    ("task_type_seq_cls", {"lora_task_type": "SEQ_CLS"}, ["lora_task_type", "SEQ_CLS"]),
    ("use_peft_false", {"use_peft": "false"}, ["use_peft"]),
    ("hub_token_in_recipe", {"hub_token": "hf_recipe_author_token"}, ["hub_token"]),
]


@pytest.mark.parametrize("edits, needles", [t[1:] for t in TYPED], ids=[t[0] for t in TYPED])
def test_bad_value_is_refused_once_before_any_model(tmp_path, tiny_base, capsys, no_model_loading, edits, needles):
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, edits))
    refused(code, err, needles)
    assert not (tmp_path / "out").exists()
    assert "hf_recipe_author_token" not in err  # a refused token is not echoed


@pytest.mark.parametrize("edits, needles", [t[1:] for t in TYPED], ids=[t[0] for t in TYPED])
def test_bad_value_is_refused_for_real_too(tmp_path, tiny_base, capsys, no_model_loading, edits, needles):
    """The same recipes without --dry-run: the same one line, before any model, nothing written."""
    from slice_trl import run as run_mod

    capsys.readouterr()
    code = run_mod.main([str(write_recipe(tmp_path, tiny_base, edits))])
    refused(code, capsys.readouterr().err.strip(), needles)
    assert not (tmp_path / "out").exists()


def test_missing_optional_packages_are_refused(tmp_path, tiny_base, capsys, no_model_loading):
    """An optimiser or a tracker whose package is not installed: refused by name, with its pip command."""
    import importlib.util

    if importlib.util.find_spec("bitsandbytes") is None:
        code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, {"optim": "adamw_bnb_8bit"}))
        refused(code, err, ["optim", "adamw_bnb_8bit", "bitsandbytes"])
    if importlib.util.find_spec("wandb") is None:
        code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, {"report_to": "[wandb]"}))
        refused(code, err, ["report_to", "wandb", "pip install"])


def test_a_key_given_twice_is_an_error(tmp_path, tiny_base, capsys, no_model_loading):
    text = tiny_recipe_yaml(tiny_base, tmp_path / "out")
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, raw=text + "learning_rate: 2.0e-3\n"))
    refused(code, err, ["learning_rate", "twice"])
    nested = set_key(text, "init", "{method: slice, method: vanilla, c: 1.0}")
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, raw=nested))
    refused(code, err, ["method", "twice"])


FLAGS = [  # (id, overrides): a flag whose value was forgotten
    ("lr_last", ["--learning_rate"]),
    ("max_steps_then_flag", ["--max_steps", "--seed", "3"]),
    ("seed", ["--seed"]),
    ("lora_alpha", ["--lora_alpha"]),
    ("batch", ["--per_device_train_batch_size"]),
    ("epochs", ["--num_train_epochs"]),
    ("output_dir", ["--output_dir"]),
    ("section_key", ["--init.c"]),
]


@pytest.mark.parametrize("overrides", [f[1] for f in FLAGS], ids=[f[0] for f in FLAGS])
def test_a_flag_without_its_value_is_refused(tmp_path, tiny_base, capsys, no_model_loading, overrides):
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base), *overrides)
    refused(code, err, [overrides[0].lstrip("-"), "value"])


def test_hub_token_on_the_command_line_is_refused(tmp_path, tiny_base, capsys, no_model_loading):
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base), "--hub_token", "hf_secret_value")
    refused(code, err, ["hub_token", "HF_TOKEN"])
    assert "hf_secret_value" not in err


# ------------------------------------------------------------------------------ env: an allow-list
@pytest.mark.parametrize("name", ["HOME", "XDG_CACHE_HOME", "SSLKEYLOGFILE", "PYTHONPATH", "LD_PRELOAD", "HF_HUB_CACHE",
                                  "HUGGINGFACE_HUB_CACHE", "MY_OWN_VARIABLE", "WANDB_BASE_URL"])
def test_env_outside_the_allow_list_is_refused(tmp_path, tiny_base, capsys, no_model_loading, name):
    before = dict(os.environ)
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, extra=f"env: {{{name}: '{tmp_path}'}}\n"))
    refused(code, err, ["env", name])
    assert dict(os.environ) == before


def test_env_on_the_allow_list_is_accepted(tmp_path, tiny_base, capsys, no_model_loading, monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "true")  # restored after the test
    code, out, err = dry_run(capsys, write_recipe(tmp_path, tiny_base, extra="env: {TOKENIZERS_PARALLELISM: 'false'}\n"))
    assert code == 0, err
    assert os.environ.get("TOKENIZERS_PARALLELISM") == "false"


# ------------------------------------------------------------------------------ messages
def test_unreadable_recipes_are_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"model_name_or_path: caf\xe9\n")
    code, _, err = dry_run(capsys, bad)
    refused(code, err, ["latin1.yaml", "UTF-8"])
    code, _, err = dry_run(capsys, tmp_path)
    refused(code, err, [str(tmp_path), "directory"])


def test_recipes_documented_in_the_readme():
    """The README's "What a recipe can do" names the env allow-list the code uses."""
    from slice_trl.cli.recipe import ENV_ALLOWED

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## What a recipe can do"):]
    section = section[:section.index("\n## ", 4)]
    for name in ENV_ALLOWED:
        assert f"`{name}`" in section




def test_dry_run_and_push_only_together_is_one_line(tmp_path, tiny_base, capsys, no_model_loading):
    code, _, err = dry_run(capsys, write_recipe(tmp_path, tiny_base), "--push-only")
    refused(code, err, ["--dry-run", "--push-only"])
