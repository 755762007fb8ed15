"""Session-wide loopback Hub for the tests (see ``hub_server.py``).

``huggingface_hub``, ``datasets`` and ``transformers`` read ``HF_ENDPOINT`` (and
``HF_HUB_DISABLE_XET``) ONCE, when they are imported (``huggingface_hub.constants.ENDPOINT``,
``huggingface_hub.hf_api.api``, ``datasets.config.HF_ENDPOINT``). So the server is started when
this module is imported, on a port the OS picks and that stays bound for the whole session, and the
environment is set right away. Import it from ``tests/conftest.py`` so that happens before any test
module (or plugin) imports those libraries::

    from conftest_hub import *  # noqa: F401,F403  (starts the test Hub, sets HF_ENDPOINT/HF_TOKEN)

The environment also reaches subprocesses started by tests (fresh-process loading checks).
If this module is imported after ``huggingface_hub`` already was (the line above is missing from
``tests/conftest.py``), the already-imported endpoint constants are re-pointed at the server and a
warning says so.
"""

from __future__ import annotations

import atexit
import os
import sys
import uuid
import warnings

import pytest

try:
    from hub_server import HubServer
except ImportError:  # tests/ imported as a package
    from tests.hub_server import HubServer

__all__ = ["TEST_HUB_TOKEN", "HUB_SERVER", "HUB_MODES", "hub", "hub_modes", "hub_repo_name", "start_test_hub"]
HUB_MODES = ["full", "strict"]  # strict: only what the Hub's documented endpoints must answer

# A recognisable fake token: tests grep files, repos and logs for it.
TEST_HUB_TOKEN = "hf_slice_trl_TEST_token_4c1b9e7f2a6d8"  # fake; underscores keep it from looking like a real token
_REGISTRY_ATTR = "_slice_trl_test_hub_server"  # one server per process, however this module is imported


def _retarget_imported_clients(url: str) -> list[str]:
    """Point already-imported Hub clients at ``url`` (fallback when the import order was wrong)."""
    patched = []
    constants = sys.modules.get("huggingface_hub.constants")
    if constants is not None and constants.ENDPOINT != url:
        from urllib.parse import urlsplit

        constants.ENDPOINT = url
        constants.HUGGINGFACE_CO_URL_TEMPLATE = url + "/{repo_id}/resolve/{revision}/{filename}"
        constants.HF_URL_HOSTS = frozenset(set(constants.HF_URL_HOSTS) | {urlsplit(url).hostname})
        constants.HF_HUB_DISABLE_XET = True
        patched.append("huggingface_hub.constants")
    hf_api = sys.modules.get("huggingface_hub.hf_api")
    if hf_api is not None and getattr(hf_api, "api", None) is not None and hf_api.api.endpoint != url:
        hf_api.api.endpoint = url
        patched.append("huggingface_hub.hf_api.api")
    ds_config = sys.modules.get("datasets.config")
    if ds_config is not None and getattr(ds_config, "HF_ENDPOINT", url) != url:
        ds_config.HF_ENDPOINT = url
        patched.append("datasets.config")
    return patched


def start_test_hub() -> HubServer:
    """Start (once per process) the loopback Hub and point the Hub clients at it."""
    server = getattr(sys, _REGISTRY_ATTR, None)
    if server is None:
        server = HubServer(token=TEST_HUB_TOKEN).start()
        setattr(sys, _REGISTRY_ATTR, server)
        atexit.register(server.stop)
    os.environ["HF_ENDPOINT"] = server.url
    os.environ["HF_TOKEN"] = TEST_HUB_TOKEN
    os.environ["HF_HUB_DISABLE_XET"] = "1"
    os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.pop("HF_HUB_OFFLINE", None)
    patched = _retarget_imported_clients(server.url)
    if patched:
        warnings.warn(
            f"huggingface_hub/datasets were imported before the test Hub started; re-pointed {patched} at "
            f"{server.url}. Add `from conftest_hub import *` at the top of tests/conftest.py.",
            stacklevel=2,
        )
    return server


HUB_SERVER = start_test_hub()


@pytest.fixture
def hub() -> HubServer:
    """The session's loopback Hub, with failure injection reset and the request log cleared
    before the test (so a test's log assertions only see its own requests)."""
    server = start_test_hub()
    server.reset_faults()
    server.clear_log()
    server.strict = False
    yield server
    server.reset_faults()
    server.strict = False


@pytest.fixture(params=HUB_MODES)
def hub_modes(request, hub) -> HubServer:
    """`hub` in each of its modes: the publishing tests run against both a Hub that answers
    everything the real one does and a strict one (no optional metadata, no Xet)."""
    hub.strict = request.param == "strict"
    yield hub


@pytest.fixture
def hub_repo_name() -> str:
    """A fresh repository name (repos live for the whole session on the shared server)."""
    return f"repo-{uuid.uuid4().hex[:10]}"
