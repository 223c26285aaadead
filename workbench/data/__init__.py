"""Market data: bar contract, sources, store, calendar, quality and ingest."""
