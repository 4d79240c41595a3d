"""Upload an exported adapter and its model card to the Hugging Face Hub, all files in one commit or none.

Offline (HF_HUB_OFFLINE=1) or with the hub unreachable or no token, `check_hub` stops *before* anything is
exported or uploaded, with a message that says why and what to do.
"""

from __future__ import annotations

from pathlib import Path


class HubError(RuntimeError):
    """The upload cannot happen (offline, unreachable, not logged in, refused); nothing was uploaded."""


def _api(endpoint: str | None, token: str | None):
    from huggingface_hub import HfApi

    return HfApi(endpoint=endpoint, token=token)


def check_hub(repo_id: str, endpoint: str | None = None, token: str | None = None) -> str:
    """Who would upload: fails fast offline, without a token, or when the hub does not answer. Returns the user."""
    from huggingface_hub import constants

    if "/" not in repo_id or repo_id.count("/") > 1:
        raise HubError(f"--push-to-hub {repo_id!r}: expected a repo id <user or org>/<name>")
    if constants.HF_HUB_OFFLINE:
        raise HubError(
            f"offline mode (HF_HUB_OFFLINE=1): nothing was exported or uploaded to {repo_id}. "
            "Unset HF_HUB_OFFLINE on a machine with internet, or export without --push-to-hub and upload later"
        )
    api = _api(endpoint, token)
    try:
        return api.whoami()["name"]
    except Exception as err:  # noqa: BLE001 - network, auth and server errors come in many types; all stop here
        first_line = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise HubError(
            f"cannot upload to {repo_id} on {api.endpoint}: {type(err).__name__}: {first_line}. "
            "Nothing was exported or uploaded. Log in (`hf auth login` or HF_TOKEN) and check the connection"
        ) from err


def push_files(
    repo_id: str,
    files: dict[str, Path | bytes],
    message: str,
    endpoint: str | None = None,
    token: str | None = None,
    private: bool | None = None,
) -> str:
    """Create the model repo if needed and add `files` (path in repo → local file or bytes) in one commit."""
    from huggingface_hub import CommitOperationAdd

    api = _api(endpoint, token)
    try:
        api.create_repo(repo_id, repo_type="model", exist_ok=True, private=private)
        operations = [
            CommitOperationAdd(path_in_repo=name, path_or_fileobj=data if isinstance(data, bytes) else str(data))
            for name, data in files.items()
        ]
        info = api.create_commit(repo_id, operations, commit_message=message, repo_type="model")
    except Exception as err:  # noqa: BLE001 - a commit either lands whole or not at all
        raise HubError(f"upload to {repo_id} failed, nothing was committed: {type(err).__name__}: {err}") from err
    return info.commit_url
