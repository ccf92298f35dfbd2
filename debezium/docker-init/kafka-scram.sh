#!/usr/bin/env bash
# apache/kafka image entrypoint (docker-compose): the SCRAM-SHA-512 logins are written when the
# storage is formatted, as `erpsync stack up` does locally (the image's own start-up formats without
# them and skips a formatted directory), and the broker's own login goes in a JAAS file. Then the
# image's start-up runs. Credentials go through 0600 files, never argv. Passwords: no , [ ] " or \.
# A volume formatted before these logins existed does not get them here: add them once while the
# broker still runs its earlier PLAINTEXT configuration (kafka-configs.sh --bootstrap-server kafka:9092
# --alter --entity-type users --entity-name NAME --add-config 'SCRAM-SHA-512=[password=...]'), as
# `erpsync stack up` does locally, or start from a new volume.
set -euo pipefail
umask 077
dir=/tmp/erpsync
mkdir -p "$dir"
cat > "$dir/jaas.conf" <<JAAS
KafkaServer {
  org.apache.kafka.common.security.scram.ScramLoginModule required
  username="$ERPSYNC_KAFKA_BROKER_USER" password="$ERPSYNC_KAFKA_BROKER_PASSWORD";
};
JAAS
export KAFKA_OPTS="${KAFKA_OPTS:-} -Djava.security.auth.login.config=$dir/jaas.conf"
# For the healthcheck (kafka-broker-api-versions.sh --command-config).
cat > "$dir/client.properties" <<PROPS
security.protocol=SASL_PLAINTEXT
sasl.mechanism=SCRAM-SHA-512
sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required username="$ERPSYNC_KAFKA_BROKER_USER" password="$ERPSYNC_KAFKA_BROKER_PASSWORD";
PROPS
cat > "$dir/format.properties" <<PROPS
process.roles=$KAFKA_PROCESS_ROLES
node.id=$KAFKA_NODE_ID
controller.quorum.voters=$KAFKA_CONTROLLER_QUORUM_VOTERS
controller.listener.names=$KAFKA_CONTROLLER_LISTENER_NAMES
listeners=$KAFKA_LISTENERS
listener.security.protocol.map=$KAFKA_LISTENER_SECURITY_PROTOCOL_MAP
inter.broker.listener.name=$KAFKA_INTER_BROKER_LISTENER_NAME
log.dirs=$KAFKA_LOG_DIRS
PROPS
{
  printf '%s\n' kafka.tools.StorageTool format --ignore-formatted "--cluster-id=$CLUSTER_ID" -c "$dir/format.properties"
  for login in "$ERPSYNC_KAFKA_BROKER_USER:$ERPSYNC_KAFKA_BROKER_PASSWORD" \
               "$ERPSYNC_KAFKA_USER:$ERPSYNC_KAFKA_PASSWORD" \
               "$ERPSYNC_CONNECT_KAFKA_USER:$ERPSYNC_CONNECT_KAFKA_PASSWORD"; do
    printf -- '--add-scram\n"SCRAM-SHA-512=[name=%s,password=%s]"\n' "${login%%:*}" "${login#*:}"
  done
} > "$dir/format.args"
/opt/kafka/bin/kafka-run-class.sh "@$dir/format.args" > /dev/null  # it echoes the SCRAM records
rm -f "$dir/format.args"
exec /etc/kafka/docker/run
