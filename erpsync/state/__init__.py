"""Pure domain logic: deterministic reducers ``apply(state, event) -> (state, outputs)``.

Nothing here imports bytewax or a client library, and nothing reads the clock: event time comes in
with the events. That keeps every rule unit-testable with plain lists and the engine replaceable.
"""


def newer(row: tuple[object, ...] | None, position: str) -> bool:
    """Whether a change at `position` supersedes `row`, a stored row whose first field is its position.

    Every reducer fences its rows this way: stale, duplicate and replayed events change nothing.
    """
    return row is None or position > str(row[0])
