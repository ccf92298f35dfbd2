"""The Avro contract (``avro/*.avsc``), its last released versions (``released/``), and its serde."""
