"""The Avro contract: schemas, release history, serde, evolution rules; source-table mappings and their check."""
