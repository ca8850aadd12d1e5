"""Which share(s) of a site a render writes, and where: `render --host NAME` writes one
host's share into the output directory, `--all-hosts` every host's into DIR/hosts/NAME/."""

from __future__ import annotations

from pathlib import Path

from crate_deploy.errors import UsageError
from crate_deploy.plan.placement import host_names
from crate_deploy.site.model import Site

HOSTS_DIR = "hosts"


def render_shares(site: Site, output_dir: Path, host: str | None,
                  all_hosts: bool) -> list[tuple[str | None, Path]]:
    """(host, directory) for each share to render; (None, output_dir) for a site without
    hosts:, which renders whole, as it always did."""
    names = host_names(site)
    if host is not None and all_hosts:
        raise UsageError("give --host NAME or --all-hosts, not both")
    if not names:
        if host is not None or all_hosts:
            raise UsageError("the site has no hosts: section, so it has no per-host shares: "
                             "render without --host/--all-hosts, or add hosts: to the site")
        return [(None, output_dir)]
    if all_hosts:
        return [(name, output_dir / HOSTS_DIR / name) for name in names]
    if host is None:
        raise UsageError(f"the site places its services on hosts ({', '.join(names)}): "
                         "render one host's share with --host NAME, or every host's with "
                         "--all-hosts")
    if host not in names:
        import difflib  # only a misspelt host needs it

        close = difflib.get_close_matches(host, names, n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else f"hosts: {', '.join(names)}"
        raise UsageError(f"--host {host}: no such host in the site's hosts: section; {hint}")
    return [(host, output_dir)]


def stale_hosts(site: Site, output_dir: Path) -> list[str]:
    """Notes for DIR/hosts/NAME/ folders of hosts the site no longer has (left in place:
    the host may still run that share until it is rolled out)."""
    folder = output_dir / HOSTS_DIR
    if not folder.is_dir():
        return []
    names = set(host_names(site))
    return [f"{folder / entry.name} is the share of host {entry.name}, which the site no "
            "longer has: stop its fleet there, then remove the folder"
            for entry in sorted(folder.iterdir()) if entry.is_dir() and entry.name not in names]
