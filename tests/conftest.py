"""Shared fixtures. The loopback Hub is started at import time (before any test module imports
huggingface_hub / datasets / transformers), see conftest_hub.py."""

import os
import sys

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")

from conftest_hub import *  # noqa: E402,F401,F403  (starts the test Hub, sets HF_ENDPOINT/HF_TOKEN)

import pytest  # noqa: E402

SHARED_DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared", "data")


@pytest.fixture
def tiny_tokenizer():
    from slice_trl.utils.testing import tiny_tokenizer as make

    return make()


@pytest.fixture
def tiny_model():
    from slice_trl.utils.testing import tiny_llama

    return tiny_llama()


@pytest.fixture(scope="session")
def smollm2():
    """Real SmolLM2-135M-Instruct (bundled GGUF, cached as safetensors on first use)."""
    from slice_trl.models.loading import load_model_and_tokenizer

    try:
        return load_model_and_tokenizer("smollm2-135m-instruct")
    except FileNotFoundError as err:  # pragma: no cover - install step missing
        pytest.fail(str(err))


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: per-op cost dominates and an OpenMP thread team only adds barriers (on a
    shared, oversubscribed CPU its spin-waits make such tests 10-50x slower). Restored after.
    Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def restore_root_logger():
    """slice_trl.run.main() calls logging.basicConfig: keep its handler (bound to one test's
    captured stderr) from outliving the test."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture
def no_model_loading(monkeypatch):
    """Loading a model (or a tokenizer through transformers' Auto classes) fails the test: recipe
    validation and --dry-run must not load one."""
    import transformers

    import slice_trl.models.loading

    def forbidden(*args, **kwargs):
        raise AssertionError("a model or tokenizer was loaded while validating a recipe")

    monkeypatch.setattr(slice_trl.models.loading, "load_model_and_tokenizer", forbidden)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", forbidden)
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", forbidden)
