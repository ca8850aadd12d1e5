"""Command functions: each returns the exit code; cli.py parses arguments and calls them."""
