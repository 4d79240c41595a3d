"""Fail fast when pretrained weights are neither on disk nor reachable.

Without a network, `huggingface_hub` retries each file for ~45 s before giving up; an evaluation that is
going to fail should say so at once. The rule: use a local path or the local hub cache if it has the files;
otherwise, when offline mode is set (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE) or the hub endpoint does not
accept a TCP connection within a few seconds, raise `BackboneUnavailable` naming what was tried and the ways
out. Only when the hub answers do we let the library download.
"""

from __future__ import annotations

import os
import socket
from urllib.parse import urlparse

PROBE_TIMEOUT_S = 3.0
_TRUE = {"1", "on", "yes", "true"}


class BackboneUnavailable(RuntimeError):
    """Pretrained evaluation weights could not be loaded; the message says what was tried and what to do."""


def unavailable(what: str, tried: list[str], setting: str, reason: str) -> BackboneUnavailable:
    """A `BackboneUnavailable` naming the backbone, the places tried, why, and the two ways out."""
    return BackboneUnavailable(
        f"cannot load pretrained {what} weights ({reason}). Tried: {'; '.join(tried)}. "
        f"Either set `{setting}` to a local path holding the weights (or pre-fill the Hugging Face cache), "
        "or score with random weights via `eval.backbones=random` (tests only: the numbers are then not "
        "comparable with any paper)."
    )


def offline_reason() -> str | None:
    """Why the hub cannot be used right now (offline mode, endpoint unreachable), or None if it can."""
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in _TRUE:
            return f"{var} is set"
    if any(os.environ.get(var) for var in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a direct probe says nothing about a proxy; let the hub client try
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co")
    url = urlparse(endpoint)
    host, port = url.hostname or "huggingface.co", url.port or (80 if url.scheme == "http" else 443)
    try:
        socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as err:
        return f"{host}:{port} is unreachable: {err}"
    return None


def cached_hub_file(repo_id: str, filenames: list[str]) -> str | None:
    """Local path of the first of `filenames` already in the Hugging Face cache for `repo_id`, else None."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for name in filenames:
        path = try_to_load_from_cache(repo_id, name)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None
