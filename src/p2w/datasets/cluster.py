"""Reaching a Ray cluster (``--ray ADDRESS``): ``local`` starts a private one on this machine (stopped at the end),
``auto`` joins the cluster this machine belongs to, ``ray://HOST:PORT`` a remote one (p2w installed on its nodes).
Ray is imported only by the caller, when a run starts."""

from __future__ import annotations

from typing import Any

from p2w.errors import P2WError

RAY_HINT = "--ray needs Ray Data: pip install 'p2w[ray]'"


def check_address(address: str) -> None:
    """Refuse an address ``connect`` cannot use, before any work."""
    if address not in ("local", "auto") and not address.startswith("ray://"):
        raise P2WError(f"unknown --ray address {address!r}: use local, auto or ray://HOST:PORT")


def connect(ray: Any, address: str) -> bool:
    """Connect to ``address``; True when this call started the connection (so ends it)."""
    if ray.is_initialized():
        return False
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise P2WError(
            f"cannot reach the Ray cluster at {address!r} ({exc}); start one with: ray start --head"
        ) from exc
    return True
