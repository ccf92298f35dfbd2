"""One module per external system, each with the same shape.

Inputs build source steps into a dataflow and return streams of ``state.records`` types;
outputs take such streams.
"""
