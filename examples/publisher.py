"""An external publisher: tells a chat room the time, every few seconds.

    python examples/publisher.py --group chat-lobby --interval 3

A separate service (a script, a cron job, a Django view...) that is not part
of the deployment but reaches its WebSocket clients through Redis: it sends a
``chat.message`` to the group ``chat-lobby``, which every socket in the room
``lobby`` of the chat examples (``starlette_chat``, ``django_chat``) joined,
so each open tab shows the line. Configured like every
channels-lite process, from the environment: ``CHANNELS_LITE_REDIS_URL`` (or
``REDIS_URL``), ``CHANNELS_LITE_PREFIX``. SIGTERM or Ctrl-C stops it (exit 0).
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from datetime import UTC, datetime

from channels_lite import Publisher
from channels_lite.exceptions import ChannelsLiteError

logger = logging.getLogger("publisher")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument(
        "--group", default="chat-lobby", help="group to send to (default: chat-lobby)"
    )
    parser.add_argument("--interval", type=float, default=5.0, help="seconds between messages")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())

    with Publisher() as publisher:  # settings from CHANNELS_LITE_* / REDIS_URL
        logger.info("publishing to group %r every %g s", args.group, args.interval)
        while not stop.is_set():
            text = f"it is {datetime.now(UTC):%H:%M:%S} UTC"
            message = {"type": "chat.message", "name": "publisher", "text": text}
            try:
                publisher.group_send(args.group, message)
            except ChannelsLiteError as exc:  # Redis restarting, say: try again next time
                logger.warning("not sent: %s", exc)
            else:
                logger.info("sent %r", text)
            stop.wait(args.interval)
    logger.info("stopped")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
