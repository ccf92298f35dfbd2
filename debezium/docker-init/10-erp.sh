#!/usr/bin/env bash
# postgres image init hook (docker-compose): the reference ERP schema, the ops database and the
# least-privilege capture and intake-writer logins, and the schema registry's database and login,
# exactly as `erpsync stack up` provisions them locally.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f /erpsync/reference/erp.postgres.sql
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
  -v capture_user="$ERPSYNC_ERP_CAPTURE_USER" -v capture_password="$ERPSYNC_ERP_CAPTURE_PASSWORD" \
  -f /erpsync/debezium/erp-capture.sql
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
  -v intake_user="$ERPSYNC_ERP_INTAKE_USER" -v intake_password="$ERPSYNC_ERP_INTAKE_PASSWORD" \
  -f /erpsync/debezium/erp-intake-writer.sql
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres -c "CREATE DATABASE erpsync_ops"
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d postgres \
  -v registry_user="$ERPSYNC_REGISTRY_USER" -v registry_password="$ERPSYNC_REGISTRY_PASSWORD" <<'SQL'
CREATE ROLE :"registry_user" LOGIN PASSWORD :'registry_password';
CREATE DATABASE erpsync_registry OWNER :"registry_user";
SQL
