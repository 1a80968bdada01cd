"""How Feast serves a feature service: its views as Feast's online read resolves them, the one
driver join key, the ttls, and the Redis hash fields Feast's Redis online store writes them under.

Resolved once per reader at start (`ServiceLayout.of`); the readers in `online.py` and the batch
job's feature check use it. Where Feast keeps a helper private, it is called, not copied.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from feast import FeatureStore, FeatureView
from feast.base_feature_view import BaseFeatureView
from feast.errors import FeastObjectNotFoundException, FeatureServiceNotFoundException
from feast.infra.online_stores.redis import (
    RedisOnlineStore,
    RedisOnlineStoreConfig,
    _versioned_fv_name,
)
from feast.types import FeastType, Float32, Float64, Int32, Int64
from feast.utils import _get_feature_views_to_use
from feast.value_type import ValueType

from driver_ranker.errors import MissingFeatures

# Which field of Feast's Value proto carries each feature type the direct reader knows.
VALUE_FIELDS = {Float32: "float_val", Float64: "double_val", Int32: "int32_val", Int64: "int64_val"}
# Join key types a driver id (an integer) converts to without loss.
INTEGER_KEYS = {ValueType.INT32, ValueType.INT64}


def resolved_views(store: FeatureStore, service_name: str) -> list[BaseFeatureView]:
    """The feature service's views as Feast's online read resolves them (projections, pinned
    versions), each carrying the version its rows are written under."""
    try:
        service = store.get_feature_service(service_name)
    except FeatureServiceNotFoundException:
        raise MissingFeatures(
            f"feature service {service_name!r} is not in the Feast registry of {store.repo_path}: "
            "run `make features` (with OFFLINE_STORE=spark for the Spark repo's registry, its own)"
        ) from None
    try:
        # Private, but it is what get_online_features uses: both readers name the same views.
        views, on_demand = _get_feature_views_to_use(store.registry, store.project, service, allow_cache=True)
    except FeastObjectNotFoundException as exc:
        raise MissingFeatures(f"feature service {service_name!r}: {exc}") from None
    for view in views:
        # Feast 0.67's FeatureView.__copy__ (with_projection) drops current_version_number, so
        # its reads through a feature service name a versioned view without its `_vN` suffix,
        # while materialization writes under it. Take the version back from the registry.
        if view.projection.version_tag is None and getattr(view, "current_version_number", None) is None:
            stored = store.registry.get_any_feature_view(view.name, store.project, allow_cache=True)
            view.current_version_number = getattr(stored, "current_version_number", None)
    return [*views, *on_demand]


def service_features(
    store: FeatureStore, service_name: str, feature_names: Sequence[str]
) -> list[tuple[BaseFeatureView, str, FeastType]]:
    """(feature view, feature name, Feast type) for each model input, in the model's order.

    Raises MissingFeatures when the feature service does not serve every feature named.
    """
    served = {}
    for view in resolved_views(store, service_name):
        for feature in view.projection.features:
            served[feature.name] = (view, feature.name, feature.dtype)
    missing = [name for name in feature_names if name not in served]
    if missing:
        raise MissingFeatures(f"feature service {service_name!r} does not serve {missing}")
    return [served[name] for name in feature_names]


@dataclass(frozen=True)
class ServiceLayout:
    """What a reader needs to know about the feature service, resolved once at start."""

    columns: list[tuple[BaseFeatureView, str, FeastType]]
    views: list[FeatureView]
    """The stored (not on-demand) views of the columns, in column order: event times and ttls."""
    ttls_s: list[float]
    join_key: str
    """The driver's key in entity rows (Feast's SDK)."""
    view_join_key: str
    """The driver's key inside Feast's entity key (the Redis key)."""
    key_type: ValueType
    sdk_refs: list[str] | None
    """Feature references for Feast's SDK where a read through the feature service would miss
    versioned views (see resolved_views); None: read through the feature service."""

    @classmethod
    def of(cls, store: FeatureStore, service_name: str, feature_names: Sequence[str]) -> ServiceLayout:
        columns = service_features(store, service_name, feature_names)
        views = list({v.name: v for v, _, _ in columns if isinstance(v, FeatureView)}.values())
        keys = set()
        for view in views:
            for column in view.entity_columns:
                alias = view.projection.join_key_map.get(column.name, column.name)
                keys.add((alias, column.name, column.dtype.to_value_type()))
            if len(view.entity_columns) != 1:
                keys.add((view.name, "", ValueType.UNKNOWN))  # more than, or no, one key
        if len(keys) != 1 or next(iter(keys))[2] not in INTEGER_KEYS:
            raise MissingFeatures(
                f"feature service {service_name!r} is not keyed by one integer driver id "
                f"(join keys of its views: {sorted((k, t.name) for k, _, t in keys)})"
            )
        join_key, view_join_key, key_type = keys.pop()
        ttls = [v.ttl.total_seconds() if v.ttl else 0.0 for v in views]
        return cls(columns, views, ttls, join_key, view_join_key, key_type, cls._sdk_refs(store, columns))

    @staticmethod
    def _sdk_refs(store: FeatureStore, columns: list) -> list[str] | None:
        versioning = store.config.registry.enable_online_feature_view_versioning
        views = {view.name: view for view, _, _ in columns}.values()
        if not versioning or not any(
            isinstance(v, FeatureView) and v.projection.version_tag is None and v.current_version_number
            for v in views
        ):
            return None
        # By reference, Feast resolves each view from the registry, version included.
        renamed = [v.name for v in views if v.projection.name_alias or v.projection.join_key_map]
        if renamed or any(not isinstance(v, FeatureView) for v in views):
            raise MissingFeatures(
                f"Feast's SDK cannot read versioned feature views through this feature service "
                f"(it names them without their version); views {renamed or sorted(v.name for v in views)} "
                "cannot be read by reference instead: pin their versions in the feature service"
            )
        return [f"{view.name}:{name}" for view, name, _ in columns]

    def direct_read_unsupported(self, store: FeatureStore) -> str | None:
        """Why the direct Redis reader cannot read this layout, or None."""
        config = store.config.online_store
        if not isinstance(config, RedisOnlineStoreConfig):
            return f"the online store is {type(config).__name__}"
        on_demand = [v.name for v, _, _ in self.columns if not isinstance(v, FeatureView)]
        if on_demand:
            return f"on-demand feature views {sorted(set(on_demand))} are computed by Feast's SDK"
        odd = [f"{name}: {dtype}" for _, name, dtype in self.columns if dtype not in VALUE_FIELDS]
        if odd:
            return f"features of types it does not decode ({odd})"
        return None


def feast_fields(view: FeatureView, names: list[str], store: FeatureStore) -> tuple[list, bytes | str]:
    """The Redis hash fields of these features of the view, and of its event timestamp, named by
    Feast's Redis online store (versioned view names included). Its helpers are private, so they
    are called, not copied."""
    fv_name = _versioned_fv_name(view, store.config)
    _, fields = RedisOnlineStore()._generate_hset_keys_for_features(
        view, list(names), fv_name_override=fv_name
    )
    return fields[:-1], fields[-1]
