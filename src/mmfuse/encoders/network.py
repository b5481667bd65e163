"""Can a download start? A TCP connection to the host (or to the HTTPS proxy that would carry the
request) within ``timeout`` seconds. Used to fail fast offline instead of hanging in a download."""

from __future__ import annotations

import socket
import urllib.request
from urllib.parse import urlparse

PROBE_TIMEOUT = 3.0


def reachable(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    target = urlparse(url)
    proxy = urllib.request.getproxies().get(target.scheme)
    if proxy and not urllib.request.proxy_bypass(target.hostname or ""):
        target = urlparse(proxy if "://" in proxy else f"http://{proxy}")
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=timeout).close()
        return True
    except (OSError, ValueError):
        return False
