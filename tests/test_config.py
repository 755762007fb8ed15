"""InitConfig: every user error is raised at construction, naming the field (issue: "Bad input
gets a clear error naming the field before any work")."""

import math

import pytest

from slice_trl.configs.config import InitConfig


@pytest.mark.parametrize("c", [-0.1, 1.0001, 2, math.nan, math.inf, "0.5", None])
def test_c_outside_unit_interval_is_rejected_naming_the_field(c):
    with pytest.raises(ValueError, match=r"InitConfig\.c="):
        InitConfig(c=c)


@pytest.mark.parametrize("c", [0, 0.0, 0.5, 1, 1.0])
def test_c_in_unit_interval_is_accepted_as_float(c):
    cfg = InitConfig(c=c)
    assert cfg.c == float(c) and isinstance(cfg.c, float)


@pytest.mark.parametrize(
    "field, value",
    [
        ("projection", "layerwise"),
        ("prev_batching", "mixed"),
        ("prev_grad_dtype", "float16"),
        ("prev_grad_device", "cuda"),
    ],
)
def test_invalid_choice_names_the_field_and_the_choices(field, value):
    with pytest.raises(ValueError, match=rf"InitConfig\.{field}={value!r} is not valid\..* Choose one of"):
        InitConfig(**{field: value})


@pytest.mark.parametrize("field", ["cur_steps", "batch_size", "micro_batch_size", "svd_oversample"])
def test_counts_below_one_are_rejected(field):
    with pytest.raises(ValueError, match=rf"InitConfig\.{field}=0 must be >= 1"):
        InitConfig(**{field: 0})


@pytest.mark.parametrize("field", ["prev_steps", "svd_niter"])
def test_counts_below_zero_are_rejected_zero_allowed(field):
    assert getattr(InitConfig(**{field: 0}), field) == 0
    with pytest.raises(ValueError, match=rf"InitConfig\.{field}=-1 must be >= 0"):
        InitConfig(**{field: -1})


def test_defaults_follow_the_paper():
    cfg = InitConfig()
    assert (cfg.method, cfg.c, cfg.projection, cfg.cur_steps, cfg.prev_steps) == ("slice", 1.0, "global", 8, 8)
    assert (cfg.svd_oversample, cfg.svd_niter, cfg.rescale, cfg.prev_grad_dtype) == (4, 4, True, "float32")


def test_from_dict_rejects_unknown_keys_with_a_suggestion():
    with pytest.raises(ValueError, match=r"InitConfig has no field 'projecton'\. Did you mean 'projection'\?"):
        InitConfig.from_dict({"projecton": "global"})
    cfg = InitConfig.from_dict({"c": 0.5, "projection": "per_module"})
    assert cfg.to_dict()["c"] == 0.5 and cfg.projection == "per_module"
    assert InitConfig.from_dict(cfg.to_dict()) == cfg


def test_old_gradient_checkpointing_key_is_read_as_activation_checkpointing():
    """transformers 5 renamed gradient_checkpointing to activation_checkpointing: the init section
    follows, and a recipe written with the old key keeps working (the same field, not a second one)."""
    assert "gradient_checkpointing" not in InitConfig().to_dict()
    assert InitConfig.from_dict({"gradient_checkpointing": True}).activation_checkpointing is True
    assert InitConfig.from_dict({"gradient_checkpointing": True, "activation_checkpointing": True}) == \
        InitConfig(activation_checkpointing=True)
    with pytest.raises(ValueError, match=r"gradient_checkpointing=True and activation_checkpointing=False are both "
                                         r"set; .*set only activation_checkpointing"):
        InitConfig.from_dict({"gradient_checkpointing": True, "activation_checkpointing": False})


def test_from_dict_still_validates_values():
    with pytest.raises(ValueError, match=r"InitConfig\.c="):
        InitConfig.from_dict({"c": 1.5})


@pytest.mark.parametrize(
    "kwargs, uses_grads",
    [
        ({"method": "slice"}, True),
        ({"method": "slice", "c": 0.0}, True),
        ({"method": "lora_ga"}, True),
        ({"method": "loram"}, False),
        ({"method": "vanilla"}, False),
    ],
)
def test_which_data_a_method_needs(kwargs, uses_grads):
    cfg = InitConfig(**kwargs)
    assert cfg.uses_gradients is uses_grads


def test_invalid_choice_suggests_the_closest_name():
    with pytest.raises(ValueError, match="Did you mean 'slice'"):
        InitConfig(method="slise")
    # the method is asked of the initialiser registry: the error names the recipe field and every known one
    with pytest.raises(ValueError, match=r"init\.method='pissa' is unknown \(no such initialiser\)\. Choose one of "
                                         r"\['lora_ga', 'loram', 'slice', 'vanilla'\]"):
        InitConfig(method="pissa")


def test_warmup_is_the_papers_ratio_and_warmup_ratio_is_honoured(tmp_path):
    """transformers 5 dropped ``warmup_ratio``: the paper's 1% must reach ``warmup_steps`` (a ratio in
    [0, 1)), and an older recipe's ``warmup_ratio`` must not be silently ignored."""
    from slice_trl.configs.config import ContinualSFTConfig

    default = ContinualSFTConfig(output_dir=str(tmp_path), use_cpu=True)
    assert default.warmup_steps == 0.01 and default.get_warmup_steps(300) == 3  # ceil(0.01 * 300)
    old_style = ContinualSFTConfig(output_dir=str(tmp_path), use_cpu=True, warmup_ratio=0.1)
    assert old_style.warmup_steps == 0.1 and old_style.get_warmup_steps(50) == 5
    assert ContinualSFTConfig(output_dir=str(tmp_path), use_cpu=True, warmup_steps=7).get_warmup_steps(50) == 7
    with pytest.raises(ValueError, match=r"warmup_ratio=1.5 must be a ratio in \[0, 1\)"):
        ContinualSFTConfig(output_dir=str(tmp_path), use_cpu=True, warmup_ratio=1.5)
    with pytest.raises(ValueError, match="both set; set only warmup_steps"):
        ContinualSFTConfig(output_dir=str(tmp_path), use_cpu=True, warmup_ratio=0.1, warmup_steps=5)
