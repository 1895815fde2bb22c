"""The channel layer on Redis Streams: the only module that imports ``redis.asyncio``.

Round trips per operation (what makes a layer fast or slow, measured in
``bench/``): ``send`` is one ``EVALSHA`` (trim expired, check capacity, XADD,
PEXPIRE), and concurrent sends of one event-loop turn share it; ``receive`` on
a normal channel is one ``EVALSHA`` (trim, XRANGE, XDEL) that also takes up to
``receive_batch`` more, and an idle one parks in ``XREAD BLOCK`` and pops on
wake-up; ``receive`` on a process-specific channel is one ``XREAD BLOCK`` from
the last id seen, whose reply carries the entries, plus an ``XDEL`` off the
message's path; ``group_send`` is a member lookup plus one append per Redis
host, whatever the number of members.

Connections: per host and event loop, two ``redis.asyncio`` clients, each
with its pool. With several ``hosts`` every key is placed by a stable hash
of its name, so all processes agree on where a stream or group lives.
Blocking reads (an
idle receive's ``XREAD BLOCK``, a worker's ``XREADGROUP BLOCK``) have a pool
of their own, so that a hundred idle receives cannot hold every connection
while sends, group changes and heartbeats wait. Each pool holds at most
``max_connections`` (100 unless the host's options say) and a command beyond
that waits for one (up to ``pool_timeout``, 10 s): redis-py's plain pool
fails it at once instead ("Too many connections"), which a burst of a few
hundred connections joining groups at once turned into failed connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import socket
import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import AuthenticationError, NoScriptError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .. import keys, wire
from ..exceptions import BrokerError, BrokerUnavailable, ConfigError
from ..sealing import keyring_from_env
from . import _scripts
from ._base import Append, BaseChannelLayer, Popped, _LoopState
from ._inbox import OnArrival, Shedding
from ._mux import Multiplexed
from ._names import _channel_ok, check_channel

__all__ = ["RedisStreamsChannelLayer"]

logger = logging.getLogger(__name__)

_MAX_KEYS_PER_CALL = 1000
#: Largest bundle of sends (bytes of bodies and names), see ``bundle_sends``.
_BUNDLE_MAX = 256 * 1024
#: Seconds a blocking read may overrun its BLOCK before the connection is presumed dead.
_REPLY_GRACE = 5.0


@contextlib.contextmanager
def _bounded_read(block_seconds: float) -> Iterator[None]:
    """Bound a blocking read (``XREAD``/``XREADGROUP BLOCK``) to its block and a grace.

    Redis answers within the block; if it does not, the connection went
    silent (a host gone, a partition: no reset), and without this the read
    would wait until TCP keepalive gave up on it (there is no socket_timeout,
    see ``_make_client``). Raises ``BrokerUnavailable``, an outage, which the
    callers wait out and retry on a new connection (redis-py drops the
    cancelled one).
    """
    try:
        with anyio.fail_after(block_seconds + _REPLY_GRACE):
            yield
    except TimeoutError:
        raise BrokerUnavailable("Redis did not answer a blocking read in time") from None


#: Find a dead broker connection in about 20 s (Linux's default is 2 hours).
_KEEPALIVE: dict[int, int] = {
    opt: value
    for name, value in (("TCP_KEEPIDLE", 10), ("TCP_KEEPINTVL", 5), ("TCP_KEEPCNT", 2))
    if (opt := getattr(socket, name, None)) is not None
}
_HostSpec = tuple[str | None, dict[str, Any]]  # (url or None, client kwargs)
K = TypeVar("K")


class _Script:
    """EVALSHA with a reload on NOSCRIPT (a restarted Redis has an empty script cache).

    redis-py's own ``Script`` in a pipeline sends ``SCRIPT EXISTS`` on every
    execute; calling EVALSHA directly keeps the hot path at one round trip.
    """

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    async def __call__(
        self, client: aioredis.Redis | Multiplexed, keys: Sequence[str], args: Iterable[Any]
    ) -> Any:
        # execute_command: a pooled client and a Multiplexed one alike.
        try:
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            await client.execute_command("SCRIPT", "LOAD", self.source)
            return await client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


_APPEND = _Script(_scripts.APPEND)
_POP = _Script(_scripts.POP)
_GROUP_ADD = _Script(_scripts.GROUP_ADD)
_GROUP_MEMBERS = _Script(_scripts.GROUP_MEMBERS)


@dataclass(slots=True)
class _Batch:
    """Appends submitted during one event-loop turn, flushed together."""

    items: list[tuple[list[Append], asyncio.Future[tuple[list[bool], int]]]] = field(
        default_factory=list
    )


@dataclass(slots=True)
class _Clients:
    clients: list[aioredis.Redis]
    #: Per host, the client for blocking reads (a pool of its own).
    blocking: list[aioredis.Redis]
    #: Per host, the loop's shared connection for quick commands (``multiplex``).
    quick: list[aioredis.Redis | Multiplexed]
    batch: _Batch | None = None
    direct: int = 0  # appends executing outside a batch


class RedisStreamsChannelLayer(BaseChannelLayer):
    """Channels channel layer on Redis Streams.

    Takes channels_redis's ``CONFIG`` keys, so a Channels project switches by
    changing ``BACKEND`` only::

        CHANNEL_LAYERS = {"default": {
            "BACKEND": "channels_lite.layer.RedisStreamsChannelLayer",
            "CONFIG": {"hosts": ["redis://127.0.0.1:6379/0"]},
        }}

    Args:
        hosts: Redis URLs (``redis://``, ``rediss://``, ``unix://``), ``(host,
            port)`` pairs, or dicts of redis-py client arguments, optionally with
            an ``address`` (URL or pair). Several hosts shard the keys. A
            dict may also set ``max_connections`` (of each pool, 100; blocking
            reads have a pool of their own) and ``pool_timeout`` (seconds a
            command waits for a connection, 10; None: no limit).
        prefix: prefix of every key.
        expiry: seconds an undelivered message lives.
        group_expiry: seconds a group membership lives unless re-added.
        capacity: undelivered messages a channel holds before ``ChannelFull``.
        channel_capacity: glob or regex patterns to capacities; first match wins.
        max_message_size: largest encoded message body, bytes.
        receive_batch: most entries one pop takes from a process-specific stream.
        bundle_sends: merge messages sent to one stream in one event-loop turn
            into one entry (a ``msgs`` bundle, see docs/wire-protocol.md). The
            runtime's relay uses it: a broadcast answered by 500 connections
            of a worker is one entry per protocol server, not 500. Capacity
            then counts entries, not messages, so it is off by default.
        multiplex: send the commands that never block in Redis (sends,
            deletes) of one event loop down one pipelined connection per host
            (``layer/_mux.py``) instead of a pooled connection each. The
            runtime's relay uses it; for the layer in general the
            layer benchmark showed no clear difference either way yet, so it
            is off by default.
        shedding: what may be dropped for a channel whose consumer has
            fallen behind (``layer/_inbox.py``, ``Shedding``); the protocol
            server sheds pushes to slow WebSocket clients. None: nothing.
        on_arrival: offered each message that arrives for a channel with
            nothing buffered, ``(channel, body) -> taken`` (``layer/_inbox.py``,
            ``OnArrival``): the protocol server writes pushes to idle sockets
            from there, without waking a receive per socket. None: off.
        keys: the deployment's keyring, ``id:base64key[,...]`` (the first
            writes, all read): entries are sealed, and unsealed ones refused.
            ``None`` reads ``CHANNELS_LITE_KEYS``; ``""`` means no keyring.
        seal: ``sign`` or ``encrypt`` (``channels-lite[crypto]``); ``None``
            reads ``CHANNELS_LITE_SEAL``, else ``sign``.

    Raises:
        ConfigError: a bad setting, including a malformed keyring.
    """

    _outage_errors = (RedisConnectionError, RedisTimeoutError, OSError)

    def __init__(
        self,
        hosts: Sequence[Any] | None = None,
        prefix: str = "asgi",
        expiry: float = 60,
        group_expiry: float = 86400,
        capacity: int = 100,
        channel_capacity: Mapping[str | re.Pattern[str], int] | None = None,
        max_message_size: int = wire.DEFAULT_MAX_SIZE,
        receive_batch: int = 100,
        keys: str | None = None,
        seal: str | None = None,
        *,
        bundle_sends: bool = False,
        multiplex: bool = False,
        shedding: Shedding | None = None,
        on_arrival: OnArrival | None = None,
    ) -> None:
        super().__init__(
            prefix=prefix,
            expiry=expiry,
            group_expiry=group_expiry,
            capacity=capacity,
            channel_capacity=channel_capacity,
            max_message_size=max_message_size,
            receive_batch=receive_batch,
            keyring=keyring_from_env(keys, seal),
            shedding=shedding,
            on_arrival=on_arrival,
        )
        self.hosts = _parse_hosts(hosts)
        self.bundle_sends = bundle_sends
        self.multiplex = multiplex
        # Abandoned streams vanish once everything in them would have expired.
        self._stream_ttl_ms = self._expiry_ms + 10_000

    # ------------------------------------------------------------------
    # Connections

    def _clients(self, state: _LoopState | None = None) -> _Clients:
        state = state or self._state()
        if state.backend is None:
            hosts = [_make_client(url, kw) for url, kw in self.hosts]
            # (Re-authentication hooks only once per provider: on the pool
            # of short commands. A blocking read's connection that outlives
            # its token fails, and the read is retried on a fresh one.)
            blocking = [_make_client(url, kw, reauth=False) for url, kw in self.hosts]
            quick: list[aioredis.Redis | Multiplexed] = (
                [Multiplexed(client) for client in hosts] if self.multiplex else list(hosts)
            )
            state.backend = _Clients(hosts, blocking, quick)
        clients: _Clients = state.backend
        return clients

    def _host_index(self, key: str) -> int:
        n = len(self.hosts)
        return 0 if n == 1 else zlib.crc32(key.encode()) % n

    def _client_for(self, key: str) -> aioredis.Redis:
        return self._clients().clients[self._host_index(key)]

    def _blocking_for(self, key: str) -> aioredis.Redis:
        """Where a command on ``key`` that blocks in Redis (``XREAD BLOCK``,
        ``XREADGROUP BLOCK``) goes: a pool of its own, so that idle reads
        never hold the connections everything else needs."""
        return self._clients().blocking[self._host_index(key)]

    def _quick_for(self, key: str) -> aioredis.Redis | Multiplexed:
        """Where a command on ``key`` that never blocks in Redis goes (``multiplex``)."""
        return self._clients().quick[self._host_index(key)]

    # ------------------------------------------------------------------
    # Primitives

    async def _append(self, appends: list[Append]) -> tuple[list[bool], int]:
        clients = self._clients()
        if clients.batch is None and not clients.direct:
            # Nothing else is being written from this loop: one round trip
            # straight from this task, no batching machinery. Cancellation
            # point: the caller's own message may or may not be written.
            clients.direct += 1
            try:
                return await self._append_now(clients, appends)
            finally:
                clients.direct -= 1
        loop = asyncio.get_running_loop()
        future: asyncio.Future[tuple[list[bool], int]] = loop.create_future()
        if clients.batch is None:
            # First queued append of this loop turn: everything submitted
            # until the loop comes round again goes in one call per host.
            clients.batch = _Batch()
            loop.call_soon(self._start_flush, self._state())
        clients.batch.items.append((appends, future))
        # Cancellation point: the flush runs in its own task; a cancelled
        # sender just stops waiting for the outcome.
        return await future

    async def _append_now(self, clients: _Clients, appends: list[Append]) -> tuple[list[bool], int]:
        host = self._host_index(appends[0].stream)
        if len(appends) > _MAX_KEYS_PER_CALL or any(
            self._host_index(a.stream) != host for a in appends[1:]
        ):
            batch = _Batch()
            future = asyncio.get_running_loop().create_future()
            batch.items.append((appends, future))
            await self._flush_batch(clients, batch)
            result: tuple[list[bool], int] = future.result()
            return result
        groups = self._bundle(list(enumerate(appends)))
        try:
            reply = await _APPEND(clients.quick[host], *self._append_args([a for _, a in groups]))
        except (RedisError, OSError) as exc:
            raise _broker_error(exc) from exc
        added = [False] * len(appends)
        for (members, _), flag in zip(groups, reply, strict=False):
            for i in members:
                added[i] = bool(flag)
        return added, int(reply[-1])

    def _start_flush(self, state: _LoopState) -> None:
        clients: _Clients = state.backend
        batch, clients.batch = clients.batch, None
        if batch is not None:
            task = asyncio.ensure_future(self._flush_batch(clients, batch))
            state.tasks.add(task)
            task.add_done_callback(state.tasks.discard)

    async def _flush_batch(self, clients: _Clients, batch: _Batch) -> None:
        by_host: dict[int, list[tuple[int, int, Append]]] = {}
        for i, (appends, _) in enumerate(batch.items):
            for j, append in enumerate(appends):
                by_host.setdefault(self._host_index(append.stream), []).append((i, j, append))
        added: list[list[bool]] = [[False] * len(appends) for appends, _ in batch.items]
        expired = [0] * len(batch.items)
        failed: dict[int, BaseException] = {}

        async def run(host: int, work: list[tuple[int, int, Append]]) -> None:
            client = clients.quick[host]
            groups = self._bundle([((i, j), append) for i, j, append in work])
            for start in range(0, len(groups), _MAX_KEYS_PER_CALL):
                chunk = groups[start : start + _MAX_KEYS_PER_CALL]
                try:
                    # One round trip for up to 1,000 entries of this host.
                    reply = await _APPEND(client, *self._append_args([a for _, a in chunk]))
                except (RedisError, OSError) as exc:
                    for members, _ in chunk:
                        for i, _ in members:
                            failed.setdefault(i, exc)
                    continue
                for (members, _), flag in zip(chunk, reply, strict=False):
                    for i, j in members:
                        added[i][j] = bool(flag)
                expired[chunk[0][0][0][0]] += int(reply[-1])

        await asyncio.gather(*(run(host, work) for host, work in by_host.items()))
        for i, (_, future) in enumerate(batch.items):
            if future.done():  # the sender was cancelled
                continue
            if i in failed:
                future.set_exception(_broker_error(failed[i]))
            else:
                future.set_result((added[i], expired[i]))

    def _bundle(self, work: list[tuple[K, Append]]) -> list[tuple[list[K], Append]]:
        """Merge appends to the same stream into bundle entries (``bundle_sends``).

        Returns ``(members, append)`` pairs: the append to write, and the keys
        of the appends it stands for. Order within each stream is kept. A
        bundle stays under :data:`_BUNDLE_MAX` bytes (the readers of the
        relay accept a chunk and its envelope).
        """
        if not self.bundle_sends or len(work) < 2:
            return [([key], append) for key, append in work]
        out: list[tuple[list[K], Append]] = []
        open_: dict[str, tuple[list[K], list[Append], int]] = {}

        def close(stream: str) -> None:
            members, appends, _ = open_.pop(stream)
            if len(appends) == 1:
                out.append((members, appends[0]))
                return
            parts = [a.message for a in appends if a.message is not None]
            fields = self.seal(stream, wire.bundle_fields(parts))  # the entry changed: reseal
            out.append((members, Append(stream, fields, appends[0].capacity)))

        limit = min(self.max_message_size, _BUNDLE_MAX)
        for key, append in work:
            if append.message is None:
                if append.stream in open_:
                    close(append.stream)  # what was sent before it goes first
                out.append(([key], append))
                continue
            to, body = append.message
            size = len(body) + sum(len(name) + 5 for name in to) + 16  # msgpack overhead
            current = open_.get(append.stream)
            if current is not None and current[2] + size > limit:
                close(append.stream)
                current = None
            if current is None:
                open_[append.stream] = ([key], [append], size)
            else:
                current[0].append(key)
                current[1].append(append)
                open_[append.stream] = (current[0], current[1], current[2] + size)
        for stream in list(open_):
            close(stream)
        return out

    def _append_args(self, appends: list[Append]) -> tuple[list[str], list[Any]]:
        values: list[bytes] = []
        index: dict[int, int] = {}  # id(value) -> position: shared bodies once
        per_key: list[Any] = []
        for append in appends:
            per_key.append(append.capacity)
            per_key.append(len(append.fields))
            for name, value in append.fields.items():
                pos = index.get(id(value))
                if pos is None:
                    pos = index[id(value)] = len(values) + 1
                    values.append(value)
                per_key.append(name)
                per_key.append(pos)
        args = [self._expiry_ms, self._stream_ttl_ms, len(values), *values, *per_key]
        return [a.stream for a in appends], args

    async def _pop(self, stream: str, count: int) -> Popped:
        try:
            now_ms, expired, entries = await _POP(
                self._client_for(stream), [stream], [count, self._expiry_ms]
            )
        except AuthenticationError as exc:
            # A ConnectionError subclass in redis-py, but no outage: waiting
            # it out would hang every receive on a misconfiguration.
            raise _broker_error(exc) from exc
        except self._outage_errors:
            raise  # receive() waits these out
        except RedisError as exc:
            raise _broker_error(exc) from exc
        return Popped([(eid, _pairs(flat)) for eid, flat in entries], int(expired), int(now_ms))

    async def _wait(self, stream: str, block_seconds: float) -> None:
        # XREAD from 0-0 returns as soon as the stream holds any entry; it
        # consumes nothing, so cancelling it (redis-py then drops the
        # connection) loses no message.
        try:
            with _bounded_read(block_seconds):
                await self._blocking_for(stream).execute_command(  # type: ignore[no-untyped-call]
                    "XREAD",
                    "COUNT",
                    1,
                    "BLOCK",
                    int(block_seconds * 1000),
                    "STREAMS",
                    stream,
                    "0-0",
                )
        except AuthenticationError as exc:
            # A ConnectionError subclass in redis-py, but no outage: waiting
            # it out would hang every receive on a misconfiguration.
            raise _broker_error(exc) from exc
        except self._outage_errors:
            raise  # receive() waits these out
        except RedisError as exc:
            raise _broker_error(exc) from exc

    async def _read(
        self, stream: str, after: bytes, count: int, block_seconds: float
    ) -> list[tuple[bytes, dict[bytes, bytes]]]:
        try:
            with _bounded_read(block_seconds):
                reply = await self._blocking_for(stream).execute_command(  # type: ignore[no-untyped-call]
                    "XREAD",
                    "COUNT",
                    count,
                    "BLOCK",
                    int(block_seconds * 1000),
                    "STREAMS",
                    stream,
                    after,
                )
        except AuthenticationError as exc:
            raise _broker_error(exc) from exc
        except self._outage_errors:
            raise  # receive() waits these out
        except RedisError as exc:
            raise _broker_error(exc) from exc
        # redis-py (RESP2): [[stream, [(id, {field: value}), ...]]], or None.
        return [
            (entry_id, fields)
            for _, items in reply or ()
            for entry_id, fields in items
            if fields is not None
        ]

    async def _delete(self, stream: str, ids: list[bytes]) -> None:
        await self._call(self._quick_for(stream).execute_command("XDEL", stream, *ids))

    async def _group_add(self, key: str, channel: str) -> None:
        await self._call(_GROUP_ADD(self._client_for(key), [key], [channel, self._group_expiry_ms]))

    async def _group_discard(self, key: str, channel: str) -> None:
        await self._call(self._client_for(key).zrem(key, channel))

    async def _group_members(self, key: str) -> list[str]:
        reply = await self._call(
            _GROUP_MEMBERS(self._client_for(key), [key], [self._group_expiry_ms])
        )
        members: list[str] = []
        bad: list[bytes] = []
        for raw in reply:
            name = raw.decode(errors="replace")
            if _channel_ok(name):
                members.append(name)
            else:
                bad.append(raw)
        if bad:
            # The set is plain Redis data anyone can ZADD to: a member that is
            # not a channel name must not fail the group_send of the others.
            # Removed, so it is logged and counted once (one more round trip,
            # only when there is garbage).
            self._counters.malformed += len(bad)
            logger.warning(
                "group %s: removed %d member(s) that are not channel names: %r",
                key,
                len(bad),
                bad[:10],
            )
            await self._call(self._client_for(key).zrem(key, *bad))
        return members

    async def _flush_backend(self) -> None:
        for client in self._clients().clients:
            batch: list[bytes] = []
            async for key in client.scan_iter(match=keys.pattern(self.prefix), count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    await client.unlink(*batch)
                    batch = []
            if batch:
                await client.unlink(*batch)

    async def delete_streams(self, channels: Iterable[str]) -> None:
        """Delete the streams that hold ``channels``' messages. One round trip per host.

        Not part of the Channels spec: the runtime calls it for the inbox of
        a process that is gone (``name!`` deletes every ``name!*`` channel's),
        so what that process leaves behind does not wait for the stream TTL.
        """
        by_host: dict[int, list[str]] = {}
        for channel in channels:
            key = self._stream_key(check_channel(channel))
            by_host.setdefault(self._host_index(key), []).append(key)
        clients = self._clients().clients
        for host, names in by_host.items():
            await self._call(clients[host].unlink(*names))

    async def _close_backend(self, state: _LoopState) -> None:
        if state.backend is not None:
            for quick in state.backend.quick:
                if isinstance(quick, Multiplexed):
                    await quick.close()
            for client in [*state.backend.clients, *state.backend.blocking]:
                await client.aclose()

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except RedisError as exc:
            raise _broker_error(exc) from exc


def _pairs(flat: list[bytes]) -> dict[bytes, bytes]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


def _broker_error(exc: BaseException) -> BaseException:
    if isinstance(exc, AuthenticationError):
        return BrokerError(f"Redis authentication failed: {exc}")
    if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
        return BrokerUnavailable(f"Redis unavailable: {exc}")
    if isinstance(exc, RedisError):
        return BrokerError(f"Redis error: {exc}")
    return exc


def _parse_hosts(hosts: Sequence[Any] | None) -> list[_HostSpec]:
    if hosts is None:
        hosts = ["redis://127.0.0.1:6379"]
    if isinstance(hosts, str | dict) or not hosts:
        hosts = [hosts] if hosts else []
    if not hosts:
        raise ConfigError("hosts must name at least one Redis server")
    return [_parse_host(h) for h in hosts]


def _parse_host(host: Any) -> _HostSpec:
    if isinstance(host, str):
        return host, {}
    if isinstance(host, tuple | list) and len(host) == 2:
        return None, {"host": str(host[0]), "port": int(host[1])}
    if isinstance(host, dict):
        if "sentinels" in host:
            raise ConfigError("Redis Sentinel hosts are not supported; give the master's URL")
        options = dict(host)
        address = options.pop("address", None)
        if address is None:
            return None, options
        url, extra = _parse_host(address)
        return url, {**extra, **options}
    raise ConfigError(f"cannot understand Redis host {host!r}: use a URL, (host, port) or a dict")


#: Connections of one pool (per host and event loop) unless the host says.
_MAX_CONNECTIONS = 100
#: Seconds a command waits for a pooled connection before it fails as an outage.
_POOL_TIMEOUT = 10.0


def _make_client(
    url: str | None, options: dict[str, Any], *, reauth: bool = True
) -> aioredis.Redis:
    options = dict(options)
    pool_timeout = options.pop("pool_timeout", _POOL_TIMEOUT)  # None: wait as long as it takes
    settings: dict[str, Any] = {
        "max_connections": _MAX_CONNECTIONS,
        "socket_connect_timeout": 5,
        # No socket_timeout: redis-py would wrap every command in wait_for,
        # a task per command, and on Python 3.11 wait_for can swallow a
        # cancellation (gh-86296), so a cancelled receive could run on.
        # Dead peers are found by TCP keepalive instead, and the blocking
        # XREAD has its own bound (_wait).
        "socket_timeout": None,
        "socket_keepalive": True,
        "socket_keepalive_options": _KEEPALIVE,
        # One quick retry on a broken connection: after a Redis restart the
        # pooled sockets are dead and the first command on each must reconnect.
        "retry": Retry(
            ExponentialBackoff(cap=0.5, base=0.05), 1, supported_errors=(RedisConnectionError,)
        ),
        **options,
        "decode_responses": False,
    }
    if (url or "").startswith("unix:") or "unix_socket_path" in options:
        settings.pop("socket_keepalive", None)  # not a TCP socket
        settings.pop("socket_keepalive_options", None)
    try:
        # Built by redis-py as usual (it turns URLs and ssl options into
        # connection settings), then given a pool that waits when full.
        plain = (
            aioredis.Redis.from_url(url, **settings)
            if url is not None
            else aioredis.Redis(**settings)
        )
        pool = plain.connection_pool
        blocking = aioredis.BlockingConnectionPool(
            connection_class=pool.connection_class,
            max_connections=pool.max_connections,
            timeout=None if pool_timeout is None else float(pool_timeout),
            **pool.connection_kwargs,
        )
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"invalid Redis host {url or options!r}: {exc}") from exc
    # The credential provider again: a streaming one (token auth) hooks its
    # re-authentication onto the client's pool when the client is made, and
    # keeps one such hook (the last), so only one pool per host asks.
    provider = pool.connection_kwargs.get("credential_provider") if reauth else None
    client = aioredis.Redis(connection_pool=blocking, credential_provider=provider)
    client.auto_close_connection_pool = True  # ours: closed with the client
    return client
