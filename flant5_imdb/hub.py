"""Offline in seconds: one check of the Hugging Face Hub before anything is downloaded.

Unreachable, the Hub costs about 30 s of retries per item before `from_pretrained` or
`load_dataset` gives up (measured here: 30 s for the dataset alone), and then names only that
item. `preflight` tries one TCP connection (3 s at most) when some item is a Hub id. If the Hub
cannot be reached, every Hub item not in the local cache is named in one error, each with the
local option that replaces it; if all of them are cached, the libraries are switched to offline
mode, so that they read the cache at once instead of retrying the network first.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from flant5_imdb.data import looks_like_path, parse_source
from flant5_imdb.tokenizer import TRAIN_HERE

logger = logging.getLogger(__name__)


class HubUnreachable(ValueError):
    """The Hub cannot be reached and something the run needs from it is not cached."""


@dataclass(frozen=True)
class Need:
    """Something a run takes from the Hub: named by the option that gave it, with its local replacement."""

    flag: str
    repo_id: str
    kind: str  # "model" or "dataset"
    instead: str  # what to pass instead, offline


def preflight(needs: list[Need], timeout: float = 3.0) -> None:
    """Raise one `HubUnreachable` listing the uncached Hub items if the Hub cannot be reached.

    Raises:
        HubUnreachable: naming each missing item and its local replacement.
    """
    if not needs or reachable(timeout):
        return
    missing = [n for n in needs if not cached(n)]
    if missing:
        raise HubUnreachable(
            "the Hugging Face Hub cannot be reached (offline?) and these are not in the local cache: "
            + "; ".join(f"{n.flag} {n.repo_id} ({n.instead})" for n in missing)
        )
    go_offline()
    logger.info(
        "the Hugging Face Hub cannot be reached: using the local cache for %s",
        ", ".join(n.repo_id for n in needs),
    )


def reachable(timeout: float) -> bool:
    """False in offline mode (HF_HUB_OFFLINE), or when one TCP connection to the Hub fails."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection(
            (url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout
        ).close()
        return True
    except OSError:
        return False


def cached(need: Need) -> bool:
    """Whether the local caches hold `need` (its config for a model, its files or prepared data for a
    dataset).
    """
    from huggingface_hub import constants

    hub_dir = Path(constants.HF_HUB_CACHE) / f"{need.kind}s--{need.repo_id.replace('/', '--')}"
    if (hub_dir / "snapshots").is_dir() and any((hub_dir / "snapshots").iterdir()):
        return True
    if need.kind == "dataset":
        import datasets

        return (Path(datasets.config.HF_DATASETS_CACHE) / need.repo_id.replace("/", "___")).is_dir()
    return False


def go_offline() -> None:
    """Make huggingface_hub, transformers and datasets read their caches without trying the network."""
    import datasets
    from huggingface_hub import constants

    os.environ["HF_HUB_OFFLINE"] = "1"
    constants.HF_HUB_OFFLINE = True
    datasets.config.HF_HUB_OFFLINE = True


def hub_id(name: str | None) -> str | None:
    """`name` if it is a Hub id (not a local file or folder, not a path-like string), else None."""
    if not name or Path(name).expanduser().exists() or looks_like_path(name):
        return None
    return name


def needs(
    *,
    model: str | None = None,
    tokenizer: str | None = None,
    data: str | None = None,
    model_instead: str = "a local folder",
) -> list[Need]:
    """What of `model`, `tokenizer` (default: the model's) and `data` would come from the Hub."""
    found = []
    if hub_id(model):
        found.append(Need("--model", model, "model", model_instead))
    if tokenizer not in (None, TRAIN_HERE, model) and hub_id(tokenizer):
        found.append(Need("--tokenizer", tokenizer, "model", "a local folder, or --tokenizer word-level"))
    if data is not None and parse_source(data).hub_id:
        found.append(
            Need("--data", data, "dataset", "a local file or folder: parquet, csv, jsonl, or aclImdb/")
        )
    return found
