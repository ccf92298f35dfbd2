#!/usr/bin/env bash
# Debezium Connect image entrypoint (docker-compose): the REST API's basic-auth login, a JAAS
# PropertyFileLoginModule over a 0600 credentials file as `erpsync stack up` writes locally, then the
# image's start-up (KAFKA_OPTS points the JVM at the JAAS file). Password: no backslash.
set -euo pipefail
umask 077
dir=/kafka/config/erpsync
mkdir -p "$dir"
printf '%s=%s\n' "$ERPSYNC_CONNECT_USER" "$ERPSYNC_CONNECT_PASSWORD" > "$dir/rest-credentials.properties"
cat > "$dir/rest-jaas.conf" <<JAAS
KafkaConnect {
  org.apache.kafka.connect.rest.basic.auth.extension.PropertyFileLoginModule required
  file="$dir/rest-credentials.properties";
};
JAAS
exec /docker-entrypoint.sh "$@"
