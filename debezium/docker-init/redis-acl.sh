#!/bin/sh
# redis image entrypoint (docker-compose): the ACL file as `erpsync stack up` writes it locally
# (REDIS_PIPELINE_RULES and REDIS_READER_RULES in erpsync/stack/components.py; a test compares them):
# the default user off (with the pipeline's rights, which Redis needs to replay its append-only file),
# the pipeline's user, the storefronts' read-only user; SHA-256 hashed passwords.
set -eu
umask 077
PIPELINE_RULES='resetkeys ~ats:* ~ats-version:* ~price:* ~erpsync:* resetchannels -@all +@read +@write +@keyspace +@scripting +@transaction +@connection -@dangerous'
READER_RULES='resetkeys %R~ats:* %R~price:* resetchannels -@all +@connection -@dangerous +hget +hmget +hgetall +hexists +hlen +hkeys +hvals +hscan +hstrlen'
digest() { printf %s "$1" | sha256sum | cut -d' ' -f1; }
cat > /data/users.acl <<ACL
user default off resetpass $PIPELINE_RULES
user $ERPSYNC_REDIS_USER on #$(digest "$ERPSYNC_REDIS_PASSWORD") $PIPELINE_RULES
user $ERPSYNC_REDIS_READER_USER on #$(digest "$ERPSYNC_REDIS_READER_PASSWORD") $READER_RULES
ACL
exec docker-entrypoint.sh "$@"
