"""Command functions: each returns the exit code; group.py holds their options (click),
cli.py runs them and turns errors into exit codes."""
