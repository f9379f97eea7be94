"""Durable storage: the RocksDB key schema (``keys``) and the store that writes atomic, synced batches."""
