"""The plan: what a validated site means, format-neutral (names, settings, services)."""
