"""Operability: metrics, logs, readiness, against the real stack."""
