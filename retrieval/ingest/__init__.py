"""The indexing pipeline: sources, load, encode, store, publish."""
