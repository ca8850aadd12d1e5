"""Asking a fleet and its broker: probes, readiness, status, requeue."""
