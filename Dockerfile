# The erpsync flows image (docker-compose service `flows`, and the one-shot `connectors` init).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml constraints.txt README.md ./
COPY erpsync ./erpsync
COPY debezium ./debezium
RUN pip install --no-cache-dir -c constraints.txt . && useradd --system erpsync
USER erpsync
ENTRYPOINT ["erpsync"]
CMD ["run"]
