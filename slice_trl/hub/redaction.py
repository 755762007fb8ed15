"""Keeping credentials and this machine's paths out of everything that is published or logged.

The token is only ever handed to huggingface_hub (which sends it in the ``Authorization`` header).
Files that go to the Hub are public copies: credential-looking values are replaced by
``<redacted>`` and absolute paths of this machine by ``<local path>/<last part>``.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

logger = logging.getLogger(__name__)

REDACTED = "<redacted>"
LOCAL = "<local path>"
_TOKEN_RE = re.compile(r"hf_[A-Za-z0-9_]{16,}")
_SECRET_KEYS = {
    "token", "hub_token", "hf_token", "huggingface_token", "hugging_face_hub_token", "huggingface_hub_token",
    "use_auth_token", "auth_token", "access_token", "api_key", "apikey", "password", "secret", "wandb_api_key",
}
# An absolute POSIX path or a ~/ path, not part of a URL ("https://host/x") or of a relative path
# ("data/x.json"): the character before it is not a word character, ':', '/', '.', '~' or '-'.
_LOCAL_PATH_RE = re.compile(r"(?<![\w:/.~-])(?:~|)/(?:[^\s/'\"`<>|]+/)*[^\s/'\"`<>|]*")


def known_secrets(token: str | bool | None) -> list[str]:
    """The token(s) this call may use: the explicit one and whatever huggingface_hub resolves."""
    found = []
    if isinstance(token, str) and token:
        found.append(token)
    try:
        from huggingface_hub import get_token

        resolved = get_token()
        if resolved:
            found.append(resolved)
    except Exception:  # never let a secret lookup break publishing
        pass
    return [s for s in dict.fromkeys(found) if len(s) >= 8]


def redact(obj: Any, secrets: list[str]) -> Any:
    """A copy of ``obj`` with credential-looking values replaced (keys such as ``hub_token``,
    ``HF_TOKEN``, ``password``; any string containing a known token or an ``hf_...`` token)."""
    if isinstance(obj, dict):
        return {key: REDACTED if isinstance(key, str) and key.lower() in _SECRET_KEYS and isinstance(value, str)
                and value else redact(value, secrets) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v, secrets) for v in obj]
    if isinstance(obj, str) and (any(s in obj for s in secrets) or _TOKEN_RE.search(obj)):
        return REDACTED
    return obj


def _local_path(match: re.Match) -> str:
    last = match.group(0).rstrip("/").rsplit("/", 1)[-1]
    return f"{LOCAL}/{last}" if last and last != "~" else LOCAL


def without_local_paths(obj: Any) -> Any:
    """A copy of ``obj`` (JSON-like) in which every absolute path of this machine is replaced by
    ``<local path>/<last part>``: published files must not reveal (or depend on) the publisher's
    folders."""
    if isinstance(obj, dict):
        return {key: without_local_paths(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [without_local_paths(v) for v in obj]
    if isinstance(obj, str):
        return _LOCAL_PATH_RE.sub(_local_path, obj)
    return obj


def is_local_placeholder(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(LOCAL)


def public(obj: Any, secrets: list[str]) -> Any:
    """What may be published of ``obj``: no credentials, no local paths."""
    return without_local_paths(redact(obj, secrets))


def scrub(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return _TOKEN_RE.sub("hf_***", text)


def describe(err: BaseException, secrets: list[str]) -> str:
    """A short, token-free description of ``err`` that names its cause: the exception, and the
    innermost cause when a library wrapped it (e.g. ``ConnectionError`` <- ``ConnectError: [Errno 111]
    Connection refused``). The scrubbed traceback goes to DEBUG."""
    logger.debug("%s", scrub("".join(traceback.format_exception(err)), secrets))

    def one(e: BaseException) -> str:
        lines = [line for line in str(e).splitlines() if line.strip()][:3]
        return f"{type(e).__name__}: {' | '.join(lines)}" if lines else type(e).__name__

    text, seen, cause = one(err), {id(err)}, err.__cause__ or err.__context__
    root = None
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        root = cause
        cause = cause.__cause__ or cause.__context__
    if root is not None and one(root) not in text:
        text += f" (cause: {one(root)})"
    return scrub(text, secrets)
