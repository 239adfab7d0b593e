"""Drawing an evaluation: retrieval grids (grids), the pages that list them (pages), CMC and AP plots (plots)."""
