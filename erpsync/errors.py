"""What the command line tells a person when something goes wrong: one line and an exit status.

Exit statuses (README, "Exit statuses"):

- 0 success;
- 1 the command ran and its answer is negative (a check failed: reconcile below
  ``--min-accuracy``, an unhealthy ``stack status``, an incompatible schema, an unknown exception
  id, a workload not drained, an incomplete demo) or the local stack failed to start;
- 2 usage: the command line is wrong (unknown option, bad value, a path that cannot be used);
- 3 a system is unreachable (Kafka, Kafka Connect, PostgreSQL, MariaDB, Redis);
- 4 data or configuration: an invalid channel or mapping file, records dead-lettered under
  ``replay --fail-on-dead-letters``;
- 5 an internal error (a bug): the one line names the exception; ``-v`` prints the traceback.
"""

from __future__ import annotations

import socket
import urllib.error

import psycopg
import pymysql
import redis
from confluent_kafka import KafkaError, KafkaException

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
DATA = 4
INTERNAL = 5


class CliError(Exception):
    """An error the command line reports as one line, with its exit status."""

    exit_code = FAILED


class UsageError(CliError):
    exit_code = USAGE


class Unreachable(CliError):
    exit_code = UNREACHABLE


class DataError(CliError):
    exit_code = DATA


def one_line(text: object) -> str:
    """The text on one line: line breaks and runs of blanks become single spaces."""
    return " ".join(str(text).split())


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception of a chain (bytewax wraps a step's error in BytewaxRuntimeError)."""
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = exc.__cause__ or exc.__context__
        if inner is None:
            break
        exc = inner
    return exc


def classify(exc: BaseException) -> tuple[int, str]:
    """Exit status and one-line message for an exception raised by a command."""
    cause = root_cause(exc)
    for candidate in (exc, cause):
        if isinstance(candidate, CliError):
            return candidate.exit_code, one_line(candidate)
        if isinstance(candidate, psycopg.errors.UndefinedTable):
            return UNREACHABLE, (f"PostgreSQL: {_first_line(candidate)} (the ops database is not set up: "
                                 "`erpsync stack up` or `erpsync run` applies its migrations)")
        if isinstance(candidate, psycopg.OperationalError):
            return UNREACHABLE, f"PostgreSQL unreachable: {_first_line(candidate)}"
        if isinstance(candidate, pymysql.err.OperationalError):
            return UNREACHABLE, f"MariaDB unreachable: {one_line(candidate)}"
        if isinstance(candidate, redis.ConnectionError | redis.TimeoutError):
            return UNREACHABLE, f"Redis unreachable: {one_line(candidate)}"
        if isinstance(candidate, KafkaException):
            err = candidate.args[0] if candidate.args else None
            text = err.str() if isinstance(err, KafkaError) else one_line(candidate)
            if isinstance(err, KafkaError) and err.code() in _KAFKA_UNREACHABLE:
                return UNREACHABLE, f"Kafka unreachable: {text}"
            return INTERNAL, f"Kafka: {text}"
        if isinstance(candidate, urllib.error.URLError | ConnectionError | socket.timeout):
            reason = getattr(candidate, "reason", candidate)
            return UNREACHABLE, f"unreachable: {one_line(reason)}"
    return INTERNAL, f"internal error: {type(cause).__name__}: {_first_line(cause)} (run with -v for the traceback)"


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__


_KAFKA_UNREACHABLE = {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN,
                      KafkaError._RESOLVE, KafkaError.BROKER_NOT_AVAILABLE}
