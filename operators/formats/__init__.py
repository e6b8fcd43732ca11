"""Readers and writers for the formats of the field (usable without Ray)."""
