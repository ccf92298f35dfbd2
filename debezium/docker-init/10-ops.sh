#!/usr/bin/env bash
# postgres image init hook of ops-db (docker-compose): erpsync's own PostgreSQL. The ops database is
# the image's POSTGRES_DB (its tables come from `erpsync run`'s migrations); the schema registry gets
# its own login and database here, exactly as `erpsync stack up` provisions them locally.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
  -v registry_user="$ERPSYNC_REGISTRY_USER" -v registry_password="$ERPSYNC_REGISTRY_PASSWORD" <<'SQL'
CREATE ROLE :"registry_user" LOGIN PASSWORD :'registry_password';
CREATE DATABASE erpsync_registry OWNER :"registry_user";
SQL
