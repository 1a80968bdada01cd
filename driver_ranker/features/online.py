"""Online feature reads for the request path.

`RedisFeatureReader` reads Feast's Redis layout directly (every driver's HMGET in one Lua call,
per node on a Redis Cluster, keys and fields built by Feast's own functions) and skips the SDK's
protobuf-to-Python response, which is most of the time of a large read; it reads a single Redis, a
Redis Cluster and the master that Redis Sentinel names. `FeastSdkReader` asks Feast's SDK and
serves any other online store. `open_reader` picks one; tests prove both return the same values.

Both apply the feature view's `ttl` at the time of the read: a driver whose features are older is
reported stale, not scored (Feast's online read returns whatever the store holds, however old).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache, partial
from typing import Protocol

import numpy as np
import redis
import redis.asyncio as aioredis
from feast import FeatureService, FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key_prefix
from feast.infra.online_stores.helpers import _redis_key, get_online_store_from_config
from feast.infra.online_stores.redis import (
    RedisOnlineStoreConfig,
)
from feast.online_response import OnlineResponse
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.type_map import python_values_to_proto_values
from google.protobuf.timestamp_pb2 import Timestamp
from redis.asyncio.cluster import ClusterNode

from driver_ranker.errors import FeatureStoreUnavailable
from driver_ranker.features.layout import (
    VALUE_FIELDS,
    ServiceLayout,
    feast_fields,
)
from driver_ranker.features.store import (
    REDIS_ERRORS,
    async_redis_client,
    online_store_location,
    redis_location,
)

logger = logging.getLogger(__name__)

__all__ = [
    "JOIN_KEY",
    "DirectReadUnsupported",
    "FeastSdkReader",
    "FeatureRows",
    "OnlineFeatureReader",
    "RedisFeatureReader",
    "open_reader",
]

JOIN_KEY = "driver_id"
"""The driver entity's join key in feature_repo/ (batch input columns); the readers take the key
from the feature views themselves."""

READINESS_CACHE_S = 1.0
"""How long a readiness answer is reused: probes of several workers and orchestrators stay cheap."""
SCAN_COUNT = 1000
"""Keys one SCAN call looks at while readiness looks for any row of the reader's views."""
SCAN_BUDGET_S = 1.0
"""Bound on that search; a Redis with many other keys and none of ours is reported not ready."""
KEYS_PER_CALL = 1000
"""Most keys one script call reads when reads share a round trip: Redis runs one script at a time."""
DECODED_ROWS = 10_000
"""Drivers' raw replies remembered with their decoded values (a few MB): features change only when
materialized, so most reads decode nothing; past this many, the memory starts again."""

# HMGET of the same fields on every key, run inside Redis: one command and one reply for a whole
# request instead of a pipeline of one command per driver (whose client-side cost dominated).
# ARGV = number of fields, the fields, the length of one key, then every key back to back in one
# argument: the keys of one reader have one length (one integer join key, one project), and one
# argument costs the client a fraction of a hundred (redis-py packs arguments in Python). The keys
# are not declared as KEYS because a Redis Cluster refuses declared keys of different slots
# (CROSSSLOT), and a request's drivers hash to many; a script without flags may read any key its
# node holds, so a cluster gets one call per node with that node's keys. A key the node no longer
# holds (a slot moved) fails the whole call.
HMGET_ALL = """
local n = tonumber(ARGV[1])
local fields = {unpack(ARGV, 2, n + 1)}
local size = tonumber(ARGV[n + 2])
local keys = ARGV[n + 3]
local replies = {}
for i = 1, #keys, size do
  replies[#replies + 1] = redis.call('HMGET', string.sub(keys, i, i + size - 1), unpack(fields))
end
return replies
"""

# Online stores with sync reads only (SQLite) are read in this one thread: a store that hangs holds
# it and no other, whatever the request rate (reads queued behind it time out and are dropped).
# One, because Feast's SQLite store shares one connection between threads, which SQLite serializes
# anyway; with two, a read waiting behind a stuck one stalled the event loop itself for SQLite's
# busy timeout (5 s), apparently waiting on the connection while holding the GIL.
_SYNC_READ_THREADS = 1
_sync_reads = ThreadPoolExecutor(max_workers=_SYNC_READ_THREADS, thread_name_prefix="feast-sync-read")

_STORE_ERRORS = (TimeoutError, sqlite3.Error, *REDIS_ERRORS)


def _sync_read(store: FeatureStore, features: FeatureService | list[str], rows: list[dict]) -> OnlineResponse:
    """Feast's sync read, in a thread of `_sync_reads`.

    A failure is raised again without its traceback: the traceback holds the online store's
    cursors, and freeing those in the event loop's thread (after a timeout) waits on the SQLite
    connection that a stuck read still holds, which froze the loop for SQLite's busy timeout.
    """
    try:
        return store.get_online_features(features=features, entity_rows=rows)
    except Exception as exc:  # raised again just below
        try:
            error = type(exc)(*exc.args)
        except Exception:  # an exception type that is not rebuilt from its args
            error = RuntimeError(f"{type(exc).__name__}: {exc}")
    raise error


class DirectReadUnsupported(ValueError):
    """The direct Redis reader cannot read this feature service correctly; the message says why."""


@dataclass(frozen=True)
class FeatureRows:
    """Features of the drivers of one request, in the model's input order."""

    driver_ids: list[int]
    """Known drivers with fresh features, each once, in request order: the ones to score."""
    matrix: np.ndarray
    """Shape (len(driver_ids), n_features), float64."""
    unknown_ids: list[int]
    """Drivers with no (or incomplete) features online, each once, in request order."""
    stale_ids: list[int] = field(default_factory=list)
    """Drivers whose features are older than their feature view's ttl, each once, in request
    order; not scored."""
    ages_s: np.ndarray = field(default_factory=lambda: np.empty(0))
    """Per driver of `driver_ids`: seconds since the event time of its features (the oldest, with
    several views) at the read. Rows built without ages (by hand) count as age 0."""

    def __post_init__(self) -> None:
        if len(self.ages_s) != len(self.driver_ids):
            if len(self.ages_s):
                raise ValueError(f"{len(self.ages_s)} ages for {len(self.driver_ids)} drivers")
            object.__setattr__(self, "ages_s", np.zeros(len(self.driver_ids)))


class OnlineFeatureReader(Protocol):
    kind: str

    async def read(self, driver_ids: Sequence[int]) -> FeatureRows: ...

    async def readiness(self) -> str | None:
        """None when reads can be served, else a short reason (for /readyz)."""
        ...


def _split(
    driver_ids: Sequence[int],
    values: np.ndarray,
    event_times: np.ndarray,
    complete: np.ndarray,
    ttls_s: np.ndarray,
    now: float,
) -> FeatureRows:
    """Splits drivers (each once) into fresh rows, stale ids and unknown ids, in numpy.

    Row i of `values` (model inputs) and `event_times` (epoch seconds of the driver's row of each
    feature view) is driver i's; `complete[i]` says it has every value and event time (else it is
    unknown). Older than its view's ttl (seconds; 0 = never) is stale.
    """
    unknown: list[int] = []
    if not complete.all():
        unknown = list(itertools.compress(driver_ids, ~complete))
        driver_ids = list(itertools.compress(driver_ids, complete))
        values, event_times = values[complete], event_times[complete]
    ages = now - event_times
    oldest = ages.max(axis=1) if len(ttls_s) else np.zeros(len(driver_ids))
    stale = ((ttls_s > 0) & (ages > ttls_s)).any(axis=1)
    if not stale.any():
        return FeatureRows(list(driver_ids), values, unknown, [], oldest)
    fresh = ~stale
    return FeatureRows(
        list(itertools.compress(driver_ids, fresh)),
        values[fresh],
        unknown,
        list(itertools.compress(driver_ids, stale)),
        oldest[fresh],
    )


def _rows(
    driver_ids: Sequence[int],
    values: Sequence[Sequence[float | None]],
    event_times: Sequence[Sequence[float | None]],
    ttls_s: Sequence[float],
    n_features: int,
    now: float,
) -> FeatureRows:
    """`_split` of per-driver lists: `values[i]` are driver i's model inputs (None where missing:
    unknown), `event_times[i][v]` the event time of its row of view v (None: unknown). A driver
    repeated in the request counts once."""
    first: dict[int, int] = {}  # driver -> its first position
    for position, driver_id in enumerate(driver_ids):
        first.setdefault(driver_id, position)
    complete = [None not in values[i] and None not in event_times[i] for i in first.values()]
    matrix = np.full((len(first), n_features), np.nan)
    times = np.full((len(first), len(ttls_s)), np.nan)
    for row, (i, ok) in enumerate(zip(first.values(), complete, strict=True)):
        if ok:
            matrix[row], times[row] = values[i], event_times[i]
    ttls = np.asarray(ttls_s, dtype=np.float64)
    return _split(list(first), matrix, times, np.array(complete, dtype=bool), ttls, now)


def _seconds(ts: Timestamp) -> float | None:
    """Epoch seconds of Feast's event timestamp; None for the empty one of a missing row."""
    return ts.seconds + ts.nanos * 1e-9 if ts.seconds or ts.nanos else None


class _Readiness:
    """Readiness answers, reused for READINESS_CACHE_S."""

    def __init__(self, probe: Callable[[], Awaitable[str | None]]):
        self._probe = probe
        self._answer: tuple[float, str | None] | None = None

    async def __call__(self) -> str | None:
        if self._answer is not None and time.monotonic() - self._answer[0] < READINESS_CACHE_S:
            return self._answer[1]
        reason = await self._probe()
        self._answer = (time.monotonic(), reason)
        return reason


class _SharedRoundTrips:
    """Reads that arrive while one is in flight wait, and then go to Redis together in one call
    (in calls of at most KEYS_PER_CALL keys): under concurrency a worker's reads share round trips
    and Redis's cost per call; a read alone goes at once. `fetch(keys)` answers one reply per key.
    """

    def __init__(self, fetch: Callable[[list[bytes]], Awaitable[list]], timeout_s: float):
        self._fetch = fetch
        self._timeout_s = timeout_s
        self._busy = False
        self._waiting: list[tuple[list[bytes], asyncio.Future]] = []
        self._tasks: set[asyncio.Task] = set()

    async def __call__(self, keys: list[bytes]) -> list:
        if not self._busy:
            self._busy = True
            try:
                return await self._fetch(keys)
            finally:
                self._next()
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((keys, future))
        return await future

    def _next(self) -> None:
        if not self._waiting:
            self._busy = False
            return
        waiting, self._waiting = self._waiting, []
        task = asyncio.create_task(self._fetch_together(waiting))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _fetch_together(self, waiting: list[tuple[list[bytes], asyncio.Future]]) -> None:
        try:
            calls: list[list[tuple[list[bytes], asyncio.Future]]] = [[]]
            size = 0
            for keys, future in waiting:
                if future.done():  # its request gave up (timed out) while waiting
                    continue
                if size and size + len(keys) > KEYS_PER_CALL:
                    calls.append([])
                    size = 0
                calls[-1].append((keys, future))
                size += len(keys)
            await asyncio.gather(*(self._fetch_call(call) for call in calls if call))
        finally:
            self._next()

    async def _fetch_call(self, call: list[tuple[list[bytes], asyncio.Future]]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                replies = await self._fetch([key for keys, _ in call for key in keys])
        except Exception as exc:
            for _, future in call:
                if not future.done():
                    future.set_exception(exc)
            return
        except asyncio.CancelledError:
            for _, future in call:
                future.cancel()
            raise
        start = 0
        for keys, future in call:
            if not future.done():
                future.set_result(replies[start : start + len(keys)])
            start += len(keys)


def _glob_escape(raw: bytes) -> bytes:
    return b"".join(b"\\" + bytes([c]) if c in b"*?[]\\" else bytes([c]) for c in raw)


class _RedisRows:
    """Whether Redis holds any row of the views: one key known to hold them is remembered and
    checked (one round trip); when it is gone, a SCAN bounded by SCAN_BUDGET_S looks for another."""

    def __init__(
        self,
        client: aioredis.Redis | aioredis.RedisCluster,
        store: FeatureStore,
        layout: ServiceLayout,
        holds: Callable[[list[bytes]], Awaitable[list[bool]]],
    ):
        self._client = client
        self._holds = holds
        prefix = serialize_entity_key_prefix(
            [layout.view_join_key], store.config.entity_key_serialization_version
        )
        # Feast's Redis key: the serialized entity key, then the project name.
        self._pattern = _glob_escape(prefix) + b"*" + _glob_escape(store.project.encode())
        self._key: bytes | None = None

    async def check_known_key(self) -> bool:
        """Whether the remembered key still holds the views' rows (always asks Redis)."""
        held = await self._holds([self._key] if self._key is not None else [])
        if held and held[0]:
            return True
        self._key = None
        return False

    async def find(self) -> bool:
        """Looks for (and remembers) a key that holds the views' rows; False if none in the budget."""
        batch: list[bytes] = []
        try:
            async with asyncio.timeout(SCAN_BUDGET_S):
                async for key in self._client.scan_iter(match=self._pattern, count=SCAN_COUNT):
                    batch.append(key)
                    if len(batch) == 100:
                        if await self._remember_any(batch):
                            return True
                        batch = []
                return bool(batch) and await self._remember_any(batch)
        except TimeoutError:  # the budget's, not Redis's (that one is a RedisError)
            return False

    async def _remember_any(self, keys: list[bytes]) -> bool:
        for key, held in zip(keys, await self._holds(keys), strict=True):
            if held:
                self._key = key
                return True
        return False


class FeastSdkReader:
    """Feast's online read, for online stores the direct reader does not know.

    Reads go through Feast's async API where the online store has one (Redis of every
    `redis_type`), so a timeout cancels the read itself; stores with sync reads only (SQLite) are
    read in a small dedicated thread pool, so a store that hangs holds a bounded number of threads.
    A reader serves one event loop (Feast's async Redis client belongs to the loop that used it).
    """

    kind = "feast-sdk"

    def __init__(
        self, store: FeatureStore, service_name: str, feature_names: Sequence[str], timeout_s: float
    ):
        self._layout = ServiceLayout.of(store, service_name, feature_names)  # raises MissingFeatures
        self._store = store
        self._features = self._layout.sdk_refs or store.get_feature_service(service_name)
        self._names = list(feature_names)
        # One feature per stored view: its event timestamps are the view's.
        self._ts_features = [
            next(name for v, name, _ in self._layout.columns if v.name == view.name)
            for view in self._layout.views
        ]
        self._timeout_s = timeout_s
        config = store.config.online_store
        self._async = get_online_store_from_config(config).async_supported.read
        self._location = online_store_location(store)
        self._probe_id: int | None = None
        self._redis_rows: _RedisRows | None = None
        if isinstance(config, RedisOnlineStoreConfig):
            # Readiness looks at Redis itself: whether it answers, and still holds rows.
            self._redis = async_redis_client(config, timeout_s)
            self._ts_fields = [feast_fields(view, [], store)[1] for view in self._layout.views]
            self._redis_rows = _RedisRows(self._redis, store, self._layout, self._hold_ts_fields)
        self._readiness = _Readiness(self._probe)

    def _entity_rows(self, driver_ids: Sequence[int]) -> list[dict[str, int]]:
        return [{self._layout.join_key: i} for i in driver_ids]

    async def read(self, driver_ids: Sequence[int]) -> FeatureRows:
        if not driver_ids:
            return self._rows(driver_ids, None)
        rows = self._entity_rows(driver_ids)
        try:
            if self._async:
                async with asyncio.timeout(self._timeout_s):
                    response = await self._store.get_online_features_async(
                        features=self._features, entity_rows=rows
                    )
            else:
                read = partial(_sync_read, self._store, self._features, rows)
                future = asyncio.get_running_loop().run_in_executor(_sync_reads, read)
                response = await asyncio.wait_for(future, self._timeout_s)
        except _STORE_ERRORS as exc:
            raise FeatureStoreUnavailable(
                f"{self._location} did not answer: {str(exc) or 'timed out'}"
            ) from exc
        result = self._rows(driver_ids, response)
        if result.driver_ids or result.stale_ids:
            self._probe_id = (result.driver_ids or result.stale_ids)[0]
        return result

    def _rows(self, driver_ids: Sequence[int], response: OnlineResponse | None) -> FeatureRows:
        layout = self._layout
        if response is None:
            return _rows([], [], [], layout.ttls_s, len(self._names), time.time())
        now = time.time()
        data = response.to_dict()
        values = list(zip(*(data[name] for name in self._names), strict=True))
        # to_dict(include_event_timestamps=True) keeps whole seconds; the proto has the nanos.
        position = {name: i for i, name in enumerate(response.proto.metadata.feature_names.val)}
        view_times = [
            [_seconds(ts) for ts in response.proto.results[position[name]].event_timestamps]
            for name in self._ts_features
        ]
        event_times = list(zip(*view_times, strict=True))
        return _rows(driver_ids, values, event_times, layout.ttls_s, len(self._names), now)

    async def _hold_ts_fields(self, keys: list[bytes]) -> list[bool]:
        if not keys:
            await self._redis.ping()
            return []
        async with self._redis.pipeline(transaction=False) as pipe:
            for key in keys:
                pipe.hmget(key, self._ts_fields)
            return [None not in reply for reply in await pipe.execute()]

    async def _probe(self) -> str | None:
        views = [v.name for v in self._layout.views]
        if self._redis_rows is not None:
            try:
                async with asyncio.timeout(self._timeout_s):
                    found = await self._redis_rows.check_known_key()
                found = found or await self._redis_rows.find()
            except _STORE_ERRORS as exc:
                return f"{self._location} does not answer: {str(exc) or 'timed out'}"
            if not found:
                return (
                    f"{self._location} holds no features of {views} for project "
                    f"{self._store.project!r}: run `make features`"
                )
            return None
        # Other stores: they answer, and still hold the last driver a read found.
        probe = self._probe_id if self._probe_id is not None else 0
        try:
            rows = await self.read([probe])
        except FeatureStoreUnavailable as exc:
            return str(exc)
        if self._probe_id is not None and not (rows.driver_ids or rows.stale_ids):
            return f"{self._location} no longer holds features of {views} (driver {probe})"
        return None

    async def readiness(self) -> str | None:
        """None when reads can be served; else why not: the store does not answer, or holds no
        rows of the views (a Redis that restarted empty). Reused for READINESS_CACHE_S."""
        return await self._readiness()


def _redis_key_of(store: FeatureStore, layout: ServiceLayout) -> Callable[[int], bytes]:
    """Feast's Redis key of a driver: its entity key (Feast's type mapping of the view's join key
    type), then the project; Feast's writes use this private helper too. Cached per reader, and
    built from values only: a cache holding the reader would make a cycle, which gc.freeze() at
    start-up keeps forever for the first reader."""
    project, version = store.project, store.config.entity_key_serialization_version
    key_type, join_key = layout.key_type, layout.view_join_key

    @lru_cache(maxsize=65536)
    def redis_key(driver_id: int) -> bytes:
        value = python_values_to_proto_values([driver_id], key_type)[0]
        key = EntityKey(join_keys=[join_key], entity_values=[value])
        return _redis_key(project, key, entity_key_serialization_version=version)

    return redis_key


class RedisFeatureReader:
    """Reads Feast's Redis hashes directly: key = entity key + project, fields = hashes of
    view:feature and `_ts:view`, all named by Feast's Redis online store's own functions."""

    kind = "redis-direct"

    def __init__(
        self,
        store: FeatureStore,
        service_name: str,
        feature_names: Sequence[str],
        timeout_s: float,
        client: aioredis.Redis | None = None,
    ):
        layout = ServiceLayout.of(store, service_name, feature_names)  # raises MissingFeatures
        reason = layout.direct_read_unsupported(store)
        if reason:
            raise DirectReadUnsupported(f"the direct Redis reader cannot read {service_name!r}: {reason}")
        config = store.config.online_store
        self._layout = layout
        self._project = store.project
        self._location = redis_location(config)
        self._timeout_s = timeout_s
        self._n_features = len(feature_names)
        # Readers of successive model versions share the worker's connection pool.
        self._client = client or async_redis_client(config, timeout_s)
        # Every view of the driver entity lives in the same hash: one HMGET of all views' feature
        # fields, then each view's `_ts:` field, per driver.
        column_of = {(v.name, name): i for i, (v, name, _) in enumerate(layout.columns)}
        feature_fields: list[bytes | str] = []
        ts_fields: list[bytes | str] = []
        self._decoders: list[tuple[int, str]] = []  # (column, Value field) per feature field
        for view in layout.views:
            names = [name for v, name, _ in layout.columns if v.name == view.name]
            fields, ts_field = feast_fields(view, names, store)
            feature_fields += fields
            ts_fields.append(ts_field)
            for name in names:
                column = column_of[(view.name, name)]
                self._decoders.append((column, VALUE_FIELDS[layout.columns[column][2]]))
        self._fields = feature_fields + ts_fields
        self._ts_fields = ts_fields
        self._ts_slots = range(len(feature_fields), len(self._fields))
        self.redis_key = _redis_key_of(store, layout)
        sizes = {len(self.redis_key(i)) for i in (0, 1, -1, 2**31 - 1, -(2**31))}
        if len(sizes) != 1:
            raise DirectReadUnsupported(f"{service_name!r}'s Redis keys differ in length: {sorted(sizes)}")
        self._key_size = sizes.pop()
        if isinstance(self._client, aioredis.RedisCluster):
            self._hmget_all = self._hmget_per_node
        else:
            script = self._client.register_script(HMGET_ALL)
            self._hmget_all = lambda keys, fields: script(args=self._script_args(keys, fields))
        self._round_trips = _SharedRoundTrips(lambda keys: self._hmget_all(keys, self._fields), timeout_s)
        # Decoded replies, each in a row of this table (DECODED_ROWS): a read looks its replies up
        # and takes their rows with one numpy index, rather than building them in Python. A row:
        # the model inputs, each view's event time, then 1.0 if none of them is missing.
        self._slot_of: dict[tuple, int] = {}
        self._next_slot = 0
        self._table = np.zeros((DECODED_ROWS, self._n_features + len(ts_fields) + 1))
        self._ttls_s = np.asarray(layout.ttls_s, dtype=np.float64)
        self._rows_probe = _RedisRows(self._client, store, layout, self._hold_ts_fields)
        self._readiness = _Readiness(self._probe)

    async def read(self, driver_ids: Sequence[int]) -> FeatureRows:
        driver_ids = list(dict.fromkeys(driver_ids))  # each once
        keys = [self.redis_key(driver_id) for driver_id in driver_ids]
        try:
            async with asyncio.timeout(self._timeout_s):
                # One script call: every driver's HMGET (features and event times) in one command,
                # shared with the reads of other requests that arrive meanwhile.
                replies = await self._round_trips(keys) if keys else []
        except redis.exceptions.NoPermissionError as exc:
            raise FeatureStoreUnavailable(f"{self._location} refused the read: {exc}") from exc
        except (TimeoutError, *REDIS_ERRORS) as exc:
            raise FeatureStoreUnavailable(
                f"{self._location} did not answer: {str(exc) or 'timed out'}"
            ) from exc
        now = time.time()
        slots = self._slots([tuple(reply) for reply in replies])  # may start the table again
        table = self._table[slots]
        n = self._n_features
        return _split(driver_ids, table[:, :n], table[:, n:-1], table[:, -1] > 0, self._ttls_s, now)

    def _slots(self, raws: list[tuple]) -> np.ndarray:
        """The table rows of the replies, decoding those not seen before."""
        slot_of = self._slot_of
        slots = [slot_of.get(raw, -1) for raw in raws]
        if -1 in slots:
            if self._next_slot + slots.count(-1) > len(self._table):
                slot_of.clear()  # start the table again; this read's rows are decoded anew
                self._next_slot = 0
                slots = [-1] * len(raws)
                if len(raws) > len(self._table):  # MAX_DRIVER_IDS set past DECODED_ROWS
                    self._table = np.zeros((len(raws), self._table.shape[1]))
            slots = [slot if slot >= 0 else self._decode(raw) for slot, raw in zip(slots, raws, strict=True)]
        return np.array(slots, dtype=np.intp)

    def _decode(self, raw: tuple) -> int:
        """Parses one driver's reply (Feast's serialized values, then each view's event time) into
        the next row of the table; returns the row."""
        slot = self._next_slot
        self._next_slot += 1
        row = self._table[slot]
        row[:] = np.nan
        complete = True
        for (column, attr), value in zip(self._decoders, raw, strict=False):
            parsed = Value.FromString(value) if value else None
            if parsed is not None and parsed.HasField(attr):
                row[column] = getattr(parsed, attr)
            else:
                complete = False
        for view, i in enumerate(self._ts_slots):
            seconds = _seconds(Timestamp.FromString(raw[i])) if raw[i] else None
            if seconds is None:
                complete = False
            else:
                row[self._n_features + view] = seconds
        row[-1] = complete
        self._slot_of[raw] = slot
        return slot

    def _script_args(self, keys: list[bytes], fields: list[bytes | str]) -> list:
        return [len(fields), *fields, self._key_size, b"".join(keys)]

    async def _hmget_per_node(self, keys: list[bytes], fields: list[bytes | str], again: bool = True) -> list:
        """HMGET_ALL on a Redis Cluster: the keys grouped by the master that holds their slot, one
        call per master, the masters asked together; replies in the order of `keys`.

        A master that cannot be reached, or no longer holds the keys, has the slots read again and
        its keys asked once more (`again`): after a failover some node may still name the old
        master for a while, and a read is safe to repeat."""
        cluster: aioredis.RedisCluster = self._client
        await cluster.initialize()  # at once unless an error asked for the slots to be read again
        by_node: dict[str, tuple[ClusterNode, list[int]]] = {}
        for position, key in enumerate(keys):
            node = cluster.get_node_from_key(key)
            by_node.setdefault(node.name, (node, []))[1].append(position)

        async def ask(node: ClusterNode, positions: list[int]) -> list:
            args = self._script_args([keys[p] for p in positions], fields)
            try:
                return await cluster.execute_command("EVAL", HMGET_ALL, 0, *args, target_nodes=node)
            except redis.exceptions.ResponseError as exc:
                if "non local key" not in str(exc):
                    raise
                raise redis.exceptions.ConnectionError(f"{node.name} no longer holds the keys") from exc

        async def ask_again_if_moved(node: ClusterNode, positions: list[int]) -> list:
            try:
                return await ask(node, positions)
            except redis.exceptions.ConnectionError:
                if not again:
                    raise
                await cluster.nodes_manager.initialize()
                return await self._hmget_per_node([keys[p] for p in positions], fields, again=False)

        replies: list = [None] * len(keys)
        answers = await asyncio.gather(*(ask_again_if_moved(node, ps) for node, ps in by_node.values()))
        for (_, positions), answer in zip(by_node.values(), answers, strict=True):
            for position, reply in zip(positions, answer, strict=True):
                replies[position] = reply
        return replies

    async def _hold_ts_fields(self, keys: list[bytes]) -> list[bool]:
        """Through the read's own script, so that readiness also proves Redis lets us run it."""
        replies = await self._hmget_all(keys, self._ts_fields)
        return [None not in reply for reply in replies]

    async def _probe(self) -> str | None:
        views = [v.name for v in self._layout.views]
        try:
            async with asyncio.timeout(self._timeout_s):
                found = await self._rows_probe.check_known_key()
            found = found or await self._rows_probe.find()
        except redis.exceptions.NoPermissionError as exc:
            return (
                f"{self._location} refuses the direct reader's Lua script ({exc}): grant the Redis "
                "user +@scripting (or +eval +evalsha), or set FEATURE_READER=feast-sdk"
            )
        except (TimeoutError, *REDIS_ERRORS) as exc:
            return f"{self._location} does not answer: {str(exc) or 'timed out'}"
        if not found:
            return (
                f"{self._location} holds no features of {views} for project {self._project!r}: "
                "run `make features`"
            )
        return None

    async def readiness(self) -> str | None:
        """None when reads can be served; else why not: the store does not answer, or holds no
        rows of the views (a Redis that restarted empty). Reused for READINESS_CACHE_S."""
        return await self._readiness()


def open_reader(
    store: FeatureStore,
    service_name: str,
    feature_names: Sequence[str],
    timeout_s: float,
    client: aioredis.Redis | None = None,
    *,
    force_sdk: bool = False,
) -> OnlineFeatureReader:
    """The direct Redis reader where it applies, Feast's SDK otherwise or when `force_sdk`
    (FEATURE_READER=feast-sdk).

    Raises MissingFeatures when the feature service does not serve every feature named, or is not
    keyed by one integer driver id, whichever reader it would be.
    """
    layout = ServiceLayout.of(store, service_name, feature_names)
    reason = "FEATURE_READER=feast-sdk" if force_sdk else layout.direct_read_unsupported(store)
    if reason is None:
        return RedisFeatureReader(store, service_name, feature_names, timeout_s, client)
    log = logger.info if force_sdk else logger.warning
    log("features of %r are read through Feast's SDK (slower): %s", service_name, reason)
    return FeastSdkReader(store, service_name, feature_names, timeout_s)
