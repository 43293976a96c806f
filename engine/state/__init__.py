"""State: the Redis store, the embedded Redis-compatible server and per-key locks."""
