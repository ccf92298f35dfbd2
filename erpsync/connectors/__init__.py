"""One module per external system, each with the same shape: inputs that build source steps into a
dataflow and return streams of ``erpsync.records`` types, and outputs that take such streams."""
