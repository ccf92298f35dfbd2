"""Pure domain logic: deterministic reducers ``apply(state, event) -> (state, outputs)``.

Nothing here imports bytewax or a client library, and nothing reads the clock: event time comes in
with the events. That keeps every rule unit-testable with plain lists and the engine replaceable.
"""
