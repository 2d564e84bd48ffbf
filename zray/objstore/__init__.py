"""Per-node shared-memory object store: segments (shm), accounting (store), I/O (spill)."""
