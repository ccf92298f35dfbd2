# The erpsync flows image (docker-compose service `flows`, and the one-shot `connectors` init).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY erpsync ./erpsync
COPY flows ./flows
COPY schemas ./schemas
COPY connectors ./connectors
COPY state ./state
COPY debezium ./debezium
RUN pip install --no-cache-dir -c constraints.txt . && useradd --system erpsync \
    && mkdir -p /var/lib/erpsync && chown erpsync /var/lib/erpsync
# The flows' recovery snapshots live in /var/lib/erpsync (a volume in docker-compose.yml); the
# connector JSONs are read from ./debezium (`erpsync connectors apply`).
USER erpsync
ENTRYPOINT ["erpsync"]
CMD ["run"]
