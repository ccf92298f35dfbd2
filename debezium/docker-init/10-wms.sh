#!/usr/bin/env bash
# mariadb image init hook (docker-compose): the reference WMS schema and the capture login.
set -euo pipefail
mariadb -uroot -p"$MARIADB_ROOT_PASSWORD" < /erpsync/reference/wms.mysql.sql
{
  printf "SET @capture_user = '%s';\nSET @capture_password = '%s';\n" \
    "$ERPSYNC_WMS_CAPTURE_USER" "$ERPSYNC_WMS_CAPTURE_PASSWORD"
  cat /erpsync/debezium/wms-capture.sql
} | mariadb -uroot -p"$MARIADB_ROOT_PASSWORD"
