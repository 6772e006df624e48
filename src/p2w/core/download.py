"""Downloads of backbone weights and mappers, one way for both: the Hugging Face cache first, then an offline check
that fails in a second (not after the hub client's retries), then the hub or a resumable URL. Every failure is one
``P2WError`` line of the caller's class, naming the caller's remedy.
"""

from __future__ import annotations

import logging
import os
import socket
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlparse

from p2w.errors import P2WError, summary
from p2w.progress import Progress

log = logging.getLogger(__name__)


def offline_reason(url: str, hub: bool = True) -> str | None:
    """Why ``url`` cannot be downloaded from now (``HF_HUB_OFFLINE``, or its host unreachable), or None.

    A quick probe, so that an offline machine fails in a second instead of after the hub client's retries.
    """
    from huggingface_hub import constants

    if hub and constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE=1 is set"
    if not _reachable(url):
        host = urlparse(url).hostname or url
        return f"{host} cannot be reached" + (" (set HF_HUB_OFFLINE=1 to skip this check)" if hub else "")
    return None


def _reachable(url: str, timeout: float = 3.0) -> bool:
    parsed = urlparse(url)
    if not parsed.hostname:
        return False
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        with socket.create_connection((parsed.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False


def cached_hub_file(repo_id: str, filenames: Sequence[str]) -> Path | None:
    """The first of ``filenames`` of ``repo_id`` already in the Hugging Face cache, if any."""
    from huggingface_hub import try_to_load_from_cache

    for name in filenames:
        hit = try_to_load_from_cache(repo_id, name)
        if isinstance(hit, str):
            return Path(hit)
    return None


def hub_file(repo_id: str, filenames: Sequence[str], what: str, remedy: str, error: type[P2WError]) -> Path:
    """A file of a Hub repository (the first of ``filenames`` that exists): cached, else downloaded.

    ``what`` names it in messages ("the weights of ViT-B-32/laion2b"), ``remedy`` says what to do instead.
    """
    from huggingface_hub import constants, hf_hub_download

    cached = cached_hub_file(repo_id, filenames)
    if cached is not None:
        return cached
    reason = offline_reason(constants.ENDPOINT)
    if reason:
        raise error(
            f"cannot download {what}: it is not in the Hugging Face cache ({constants.HF_HUB_CACHE}) "
            f"and {reason}; {remedy}"
        )
    log.info("downloading %s from %s", what, repo_id)
    failure: Exception | None = None
    for name in filenames:
        try:
            return Path(hf_hub_download(repo_id, name))
        except Exception as exc:  # hub errors come in many types; try the next name, report the first
            failure = failure or exc
    raise error(f"downloading {what} from {repo_id} failed ({summary(failure)}); {remedy}") from failure


def url_file(
    url: str, folder: Path, what: str, remedy: str, error: type[P2WError], progress: Progress | None = None
) -> Path:
    """``url`` downloaded into ``folder`` via a ``.part`` file, resuming one left by an interrupted run."""
    reason = offline_reason(url, hub=False)
    if reason:
        raise error(f"cannot download {what} ({url}): {reason}; {remedy}")
    folder.mkdir(parents=True, exist_ok=True)
    name = Path(urlparse(url).path).name or "download.bin"
    part = folder / f"{name}.part"
    done = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={done}-"} if done else {})
    log.info("downloading %s from %s", what, url)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            if done and response.status != 206:  # the server ignored the range: start over
                done = 0
            total = done + int(response.headers.get("Content-Length") or 0)
            with part.open("ab" if done else "wb") as out:
                while block := response.read(1 << 20):
                    out.write(block)
                    done += len(block)
                    if progress:
                        progress("downloading", done, total)
    except OSError as exc:  # URLError and HTTPError are OSErrors
        raise error(f"downloading {what} ({url}) failed ({exc}); run the command again to resume, or {remedy}") from exc
    final = folder / name
    os.replace(part, final)
    return final
