"""enrichment: see docs/architecture.md."""
