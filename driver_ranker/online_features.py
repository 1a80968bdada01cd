"""Online feature reads for the request path.

`RedisFeatureReader` reads Feast's Redis layout directly (every driver's HMGET in one Lua call,
keys and fields built by Feast's own encoders) and skips the SDK's protobuf-to-Python response,
which is most of the time of a large read. `FeastSdkReader` asks Feast's SDK and serves any other
online store. `open_reader` picks one; a test proves both return the same values.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

import numpy as np
import redis
import redis.asyncio as aioredis
from feast import FeatureStore
from feast.errors import FeatureServiceNotFoundException
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3
from feast.infra.online_stores.redis import RedisOnlineStoreConfig, RedisType
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value
from feast.types import Float32, Float64, Int32, Int64

from driver_ranker.errors import FeatureStoreUnavailable, MissingFeatures
from driver_ranker.feature_store import redis_address, redis_kwargs

logger = logging.getLogger(__name__)

JOIN_KEY = "driver_id"

# Which field of Feast's Value proto carries each feature type the direct reader knows.
_VALUE_FIELDS = {Float32: "float_val", Float64: "double_val", Int32: "int32_val", Int64: "int64_val"}


# HMGET of the same fields on every key, run inside Redis: one command and one reply for a whole
# request instead of a pipeline of one command per driver (whose client-side cost dominated).
HMGET_ALL = """
local replies = {}
for i, key in ipairs(KEYS) do replies[i] = redis.call('HMGET', key, unpack(ARGV)) end
return replies
"""


@dataclass(frozen=True)
class FeatureRows:
    """Features of the drivers of one request, in the model's input order."""

    driver_ids: list[int]
    """Known drivers, each once, in request order."""
    matrix: np.ndarray
    """Shape (len(driver_ids), n_features), float64."""
    unknown_ids: list[int]
    """Drivers with no (or incomplete) features online, each once, in request order."""


class OnlineFeatureReader(Protocol):
    kind: str

    async def read(self, driver_ids: Sequence[int]) -> FeatureRows: ...

    async def ping(self) -> bool: ...


def _rows(driver_ids: Sequence[int], values: Sequence[Sequence[float | None]]) -> FeatureRows:
    """Splits per-driver values into known rows and unknown ids; a driver missing any value is unknown."""
    known, rows, unknown = [], [], []
    for driver_id, row in zip(driver_ids, values, strict=True):
        if any(v is None for v in row):
            unknown.append(driver_id)
        else:
            known.append(driver_id)
            rows.append(row)
    matrix = np.array(rows, dtype=np.float64).reshape(len(rows), len(values[0]) if values else 0)
    return FeatureRows(known, matrix, unknown)


def service_features(store: FeatureStore, service_name: str, feature_names: Sequence[str]) -> list[tuple]:
    """(feature view, feature name, Feast type) for each model input, in the model's order."""
    try:
        service = store.get_feature_service(service_name)
    except FeatureServiceNotFoundException:
        raise MissingFeatures(
            f"feature service {service_name!r} is not in the Feast registry of {store.repo_path}: "
            "run `make features`"
        ) from None
    served = {}
    for projection in service.feature_view_projections:
        view = store.get_feature_view(projection.name)
        for feature in projection.features:
            served[feature.name] = (view, feature.name, feature.dtype)
    missing = [name for name in feature_names if name not in served]
    if missing:
        raise MissingFeatures(f"feature service {service_name!r} does not serve {missing}")
    return [served[name] for name in feature_names]


class FeastSdkReader:
    """Feast's `get_online_features`, for online stores the direct reader does not know."""

    kind = "feast-sdk"

    def __init__(
        self, store: FeatureStore, service_name: str, feature_names: Sequence[str], timeout_s: float
    ):
        self._store = store
        self._service = store.get_feature_service(service_name)
        self._names = list(feature_names)
        self._timeout_s = timeout_s

    def read_sync(self, driver_ids: Sequence[int]) -> FeatureRows:
        response = self._store.get_online_features(
            features=self._service, entity_rows=[{JOIN_KEY: i} for i in driver_ids]
        ).to_dict()
        return _rows(driver_ids, list(zip(*(response[n] for n in self._names), strict=True)))

    async def read(self, driver_ids: Sequence[int]) -> FeatureRows:
        try:
            return await asyncio.wait_for(asyncio.to_thread(self.read_sync, driver_ids), self._timeout_s)
        except (TimeoutError, redis.RedisError, OSError) as exc:
            raise FeatureStoreUnavailable(f"online store read failed: {exc or 'timed out'}") from exc

    async def ping(self) -> bool:
        try:
            await self.read([0])
        except FeatureStoreUnavailable:
            return False
        return True


class RedisFeatureReader:
    """Reads Feast's Redis hashes directly: key = entity key + project, field = hash of view:feature."""

    kind = "redis-direct"

    def __init__(
        self,
        store: FeatureStore,
        service_name: str,
        feature_names: Sequence[str],
        timeout_s: float,
        client: aioredis.Redis | None = None,
    ):
        config = store.config.online_store
        self._project = store.project.encode()
        self._key_version = store.config.entity_key_serialization_version
        self._address = redis_address(config.connection_string)
        self._timeout_s = timeout_s
        # Readers of successive model versions share the worker's connection pool.
        self._client = client or async_redis_client(config.connection_string, timeout_s)
        columns = service_features(store, service_name, feature_names)
        # One HMGET per driver and view; the per-view field lists and decoders are fixed at start.
        self._views: list[tuple[list[bytes], list[tuple[int, str]]]] = []
        for view in dict.fromkeys(view.name for view, _, _ in columns):
            fields, decoders = [], []
            for column, (v, name, dtype) in enumerate(columns):
                if v.name == view:
                    fields.append(_mmh3(f"{view}:{name}"))
                    decoders.append((column, _VALUE_FIELDS[dtype]))
            self._views.append((fields, decoders))
        self._n_features = len(columns)
        self.redis_key = lru_cache(maxsize=65536)(self._redis_key)
        self._hmget_all = self._client.register_script(HMGET_ALL)

    @staticmethod
    def supports(store: FeatureStore, service_name: str, feature_names: Sequence[str]) -> bool:
        config = store.config.online_store
        if not isinstance(config, RedisOnlineStoreConfig) or config.redis_type != RedisType.redis:
            return False
        columns = service_features(store, service_name, feature_names)
        return all(dtype in _VALUE_FIELDS for _, _, dtype in columns)

    def _redis_key(self, driver_id: int) -> bytes:
        key = EntityKey(join_keys=[JOIN_KEY], entity_values=[Value(int64_val=driver_id)])
        return serialize_entity_key(key, entity_key_serialization_version=self._key_version) + self._project

    async def read(self, driver_ids: Sequence[int]) -> FeatureRows:
        keys = [self.redis_key(driver_id) for driver_id in driver_ids]
        try:
            async with asyncio.timeout(self._timeout_s):
                # Per view, one script call: every driver's HMGET in one command and one reply.
                replies = [await self._hmget_all(keys=keys, args=fields) for fields, _ in self._views]
        except (TimeoutError, redis.RedisError, OSError) as exc:
            raise FeatureStoreUnavailable(
                f"Redis at {self._address} did not answer: {exc or 'timed out'}"
            ) from exc
        values: list[list[float | None]] = [[None] * self._n_features for _ in driver_ids]
        for (_, decoders), view_replies in zip(self._views, replies, strict=True):
            for row, reply in zip(values, view_replies, strict=True):
                for (column, attr), raw in zip(decoders, reply, strict=True):
                    if raw:
                        value = Value.FromString(raw)
                        if value.HasField(attr):
                            row[column] = getattr(value, attr)
        return _rows(driver_ids, values)

    async def ping(self) -> bool:
        try:
            async with asyncio.timeout(self._timeout_s):
                return bool(await self._client.ping())
        except (TimeoutError, redis.RedisError, OSError):
            return False


def async_redis_client(connection_string: str, timeout_s: float) -> aioredis.Redis:
    return aioredis.Redis(**redis_kwargs(connection_string, timeout_s))


def open_reader(
    store: FeatureStore,
    service_name: str,
    feature_names: Sequence[str],
    timeout_s: float,
    client: aioredis.Redis | None = None,
) -> OnlineFeatureReader:
    """The direct Redis reader where it applies, Feast's SDK otherwise.

    Raises MissingFeatures when the feature service does not serve every feature named.
    """
    if RedisFeatureReader.supports(store, service_name, feature_names):
        return RedisFeatureReader(store, service_name, feature_names, timeout_s, client)
    logger.warning(
        "online store %s is read through Feast's SDK (slower): the direct reader knows plain Redis only",
        type(store.config.online_store).__name__,
    )
    return FeastSdkReader(store, service_name, feature_names, timeout_s)
