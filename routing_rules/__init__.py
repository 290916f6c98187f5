"""Routing rules: file format, validation, matching and dry runs; no networking, no models."""
