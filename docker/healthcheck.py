"""Container health check: is *this container's* channels-lite process alive on Redis?

    python /app/docker/healthcheck.py worker
    python /app/docker/healthcheck.py protocol-server --port 8000

Every protocol server and worker keeps a heartbeat key in Redis
(``{prefix}:hb:ps:<id>`` / ``{prefix}:hb:wk:<id>``), refreshed every
``heartbeat_interval`` with a TTL of ``heartbeat_timeout`` and a JSON value
that names the host it runs on. Healthy means: such a key exists with this
container's hostname, so the process is running, its event loop is not stuck,
and it reaches the broker its peers use; for a protocol server, also that it
accepts TCP connections on ``--port``. An HTTP request would not do: it would
need a worker, and a protocol server without workers is not broken.

Redis and the prefix come from the same variables as the processes'
(``CHANNELS_LITE_REDIS_URL`` or ``REDIS_URL``, ``CHANNELS_LITE_PREFIX``).
Exit 0 healthy, 1 not, with one line that ``docker inspect`` shows.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys

import redis

from channels_lite.config import PublisherConfig

ROLES = {"protocol-server": "ps", "worker": "wk"}
TIMEOUT = 3.0


def check(role: str, port: int | None) -> str:
    """Why the process is unhealthy, or ``""``."""
    config = PublisherConfig.from_env()
    host = socket.gethostname()
    client = redis.Redis.from_url(
        config.redis_url, socket_connect_timeout=TIMEOUT, socket_timeout=TIMEOUT
    )
    try:
        names = list(client.scan_iter(match=f"{config.prefix}:hb:{ROLES[role]}:*", count=1000))
        values = client.mget(names) if names else []
    except (redis.RedisError, OSError) as exc:
        return f"redis: {exc}"
    finally:
        client.close()
    mine = [v for v in values if v is not None and json.loads(v).get("host") == host]
    if not mine:
        return f"no live {role} heartbeat from host {host!r} ({len(names)} from other hosts)"
    if port is not None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        except OSError as exc:
            return f"port {port}: {exc}"
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("role", choices=sorted(ROLES))
    parser.add_argument("--port", type=int, help="also require a TCP listener on this port")
    args = parser.parse_args(argv)
    problem = check(args.role, args.port)
    print(problem or f"healthy: {args.role} on {socket.gethostname()}")
    return 1 if problem else 0


if __name__ == "__main__":
    sys.exit(main())
