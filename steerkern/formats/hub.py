"""Dictionaries on the Hugging Face Hub, fetched into its cache through huggingface_hub."""

from __future__ import annotations

from pathlib import Path

import huggingface_hub
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
)


def download(repo_id: str, subfolder: str | None) -> Path:
    """Fetch ``repo_id`` (only ``subfolder`` when given) or find it cached; return its local root."""
    patterns = [f"{subfolder.strip('/')}/*"] if subfolder else None
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns))
    except RepositoryNotFoundError as error:
        raise FileNotFoundError(
            f"{repo_id}: not a local path, and the Hugging Face Hub has no such repository (or it is private)"
        ) from error
    except (LocalEntryNotFoundError, OfflineModeIsEnabled, HfHubHTTPError) as error:
        reason = str(error).splitlines()[0]
        raise FileNotFoundError(
            f"{repo_id}: not a local path, and it could neither be downloaded from the Hugging Face Hub "
            f"nor found in its cache ({reason}). Where the network allows, run `hf download {repo_id}` "
            "and load the downloaded folder."
        ) from error
