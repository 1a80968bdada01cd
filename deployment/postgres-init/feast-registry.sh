#!/bin/sh
# Feast's SQL registry gets a database of its own beside MLflow's. PostgreSQL's image runs this on
# the first start of an empty volume only; on an older volume, create it once by hand:
#   docker compose exec postgres createdb -U "$POSTGRES_USER" "$FEAST_REGISTRY_DB"
set -e
createdb --username "$POSTGRES_USER" "$FEAST_REGISTRY_DB"
