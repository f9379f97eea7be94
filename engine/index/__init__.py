"""In-memory search structures: the vector table (rows + access lists) and the tenant-scoped indexes."""
