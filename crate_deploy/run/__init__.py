"""Running a fleet: in the foreground (launch, supervise) or under systemd (install)."""
