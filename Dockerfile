# The erpsync flows image (docker-compose services `flows-0`, `flows-1`, and the one-shot `connectors` init).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY erpsync ./erpsync
COPY flows ./flows
COPY schemas ./schemas
COPY connectors ./connectors
COPY state ./state
COPY debezium ./debezium
# The channel definitions, outside the installed package so that a deployment mounts its own
# over them (docker-compose.yml does); ERPSYNC_FLOWS__LOCATIONS names the WMS locations they may use.
COPY erpsync/config/channels /etc/erpsync/channels
ENV ERPSYNC_FLOWS__CHANNELS_DIR=/etc/erpsync/channels
RUN pip install --no-cache-dir -c constraints.txt . && useradd --system erpsync \
    && mkdir -p /var/lib/erpsync && chown erpsync /var/lib/erpsync
# The flows' recovery snapshots live in /var/lib/erpsync (a volume per process in docker-compose.yml); the
# connector JSONs are read from ./debezium (`erpsync connectors apply`).
USER erpsync
ENTRYPOINT ["erpsync"]
CMD ["run"]
