#!/usr/bin/env bash
# postgres image init hook (docker-compose): the reference ERP schema and the least-privilege capture
# and intake-writer logins, exactly as `erpsync stack up` provisions them locally. The ops database is
# not here: it has its own cluster (service ops-db), out of reach of the capture login's REPLICATION.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" -f /erpsync/reference/erp.postgres.sql
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
  -v capture_user="$ERPSYNC_ERP_CAPTURE_USER" -v capture_password="$ERPSYNC_ERP_CAPTURE_PASSWORD" \
  -f /erpsync/debezium/erp-capture.sql
psql -v ON_ERROR_STOP=1 -U "$POSTGRES_USER" -d "$POSTGRES_DB" \
  -v intake_user="$ERPSYNC_ERP_INTAKE_USER" -v intake_password="$ERPSYNC_ERP_INTAKE_PASSWORD" \
  -f /erpsync/debezium/erp-intake-writer.sql
