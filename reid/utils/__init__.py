"""Small shared utilities: seeding and determinism, library versions, process liveness."""
