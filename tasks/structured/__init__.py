"""JSON-Schema-constrained decoding: schema compiler, incremental recogniser, token masks."""
