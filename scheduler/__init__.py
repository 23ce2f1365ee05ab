"""Targets and their order: parsing target specs, blocklists, and (later) IPv4 sharding."""
