"""Every command's arguments and options (click), each calling its command function.

crate_deploy.cli.main runs this group and turns errors into exit codes; every command
function returns an exit code.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from crate_deploy import __version__
from crate_deploy.errors import UsageError
from crate_deploy.plan.names import DEFAULT_OUTPUT_DIR

SITE = click.argument("site", type=click.Path(path_type=Path, dir_okay=False),
                      default=Path("site.yaml"))
OUTPUT_DIR = click.argument("directory", type=click.Path(path_type=Path, file_okay=False),
                            default=DEFAULT_OUTPUT_DIR)


class _Command(click.Command):
    def get_short_help_str(self, limit: int = 45) -> str:
        """The whole first paragraph of the help in `crate-deploy --help`: click would cut
        it at `limit` characters with "...", which hides what the command does."""
        if self.short_help:
            return self.short_help
        return " ".join((self.help or "").split("\n\n")[0].split())


class _Group(click.Group):
    command_class = _Command


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crate-deploy")
def cli() -> None:
    """Deploy a Celery fleet (workers, beat, Flower) from one site file."""


@cli.command()
@click.argument("sites", nargs=-1, type=click.Path(path_type=Path, dir_okay=False))
def validate(sites: tuple[Path, ...]) -> int:
    """Check site files (default site.yaml); print every problem as FILE:LINE:COL: KEY: MESSAGE."""
    from crate_deploy.commands.validate_files import validate_sites

    return validate_sites(list(sites))


@cli.command()
@SITE
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), required=False)
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path, file_okay=False),
              help=f"Directory to render into, like DIRECTORY  [default: {DEFAULT_OUTPUT_DIR}]")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if something would change.")
@click.option("--diff", "show_diff", is_flag=True,
              help="Show what changes, secrets masked, and write it; --check --diff previews "
                   "without writing.")
@click.option("--json", "as_json", is_flag=True,
              help="Print the report (files, services to restart) as JSON, for CI.")
@click.option("--host", help="A site with hosts: render this host's share.")
@click.option("--all-hosts", is_flag=True, help="A site with hosts: render every host's share "
              "into DIRECTORY/hosts/NAME/.")
@click.option("--force", is_flag=True,
              help="Render even over another project's rendered site (its files are removed).")
@click.option("-v", "--verbose", is_flag=True, help="List unchanged files too.")
@click.option("--target", type=click.Choice(["systemd", "kubernetes"]), default="systemd",
              show_default=True, help="systemd units, or Kubernetes manifests (kubernetes/).")
def render(site: Path, directory: Path | None, output_dir: Path | None, check: bool,
           show_diff: bool, as_json: bool, host: str | None, all_hosts: bool, force: bool,
           verbose: bool, target: str) -> int:
    """Render systemd units (or Kubernetes manifests), Celery and Flower config for a site
    file into DIRECTORY."""
    from crate_deploy.commands.render import render_command

    if directory and output_dir and directory != output_dir:
        raise UsageError(f"two output directories ({directory} and -o {output_dir}): give one")
    return render_command(site, directory or output_dir or DEFAULT_OUTPUT_DIR, check=check,
                          show_diff=show_diff, as_json=as_json, host=host,
                          all_hosts=all_hosts, force=force, verbose=verbose,
                          target=target)


@cli.command()
@click.option("--markdown", is_flag=True, help="Print the site-file reference as Markdown.")
@click.option("--example", type=click.Path(path_type=Path, dir_okay=False),
              help="With --markdown: a site file whose values fill the example column.")
def schema(markdown: bool, example: Path | None) -> int:
    """Print the JSON Schema of the site file (or its reference, with --markdown)."""
    if markdown:
        from crate_deploy.site.load import load_site
        from crate_deploy.site.reference import markdown_reference

        data = load_site(example).data if example else None
        click.echo(markdown_reference(data), nl=False)
        return 0
    from crate_deploy.site.described import site_schema

    click.echo(json.dumps(site_schema(), indent=2))
    return 0


@cli.command()
@OUTPUT_DIR
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for every pool and Flower to answer.")
@click.option("--systemd", "use_systemd", is_flag=True,
              help="Install the units into systemd, enable and start the target.")
@click.option("--user", is_flag=True, help="With --systemd: user units (~/.config/systemd/user).")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False),
              help="With --systemd: install into this root offline (systemctl --root); "
                   "created when missing.")
@click.option("--only", multiple=True, metavar="SERVICE",
              help="Run only this service (repeatable; e.g. worker-quick, beat, flower); "
                   "readiness waits for these alone.")
def launch(directory: Path, timeout: float, use_systemd: bool, user: bool,
           root: Path | None, only: tuple[str, ...]) -> int:
    """Run the rendered fleet in the foreground (or install it into systemd)."""
    if use_systemd and only:
        raise UsageError("--only is for a foreground launch; under systemd, "
                         "`systemctl start UNIT` starts one service")
    if use_systemd:
        from crate_deploy.run.install import install_command

        if root is not None and not user and not root.exists():
            # An image is built into an empty tree: make it, as `systemctl --root` expects one.
            try:
                root.mkdir(parents=True)
                root.chmod(0o755)  # a root directory's mode, whatever the caller's umask
            except OSError as exc:
                raise UsageError(f"--root {root}: cannot create it ({exc.strerror})") from None
            click.echo(f"created {root}", err=True)
        return install_command(directory, user=user, root=root, timeout=timeout)
    if user or root:
        raise UsageError("--user and --root go with --systemd")
    from crate_deploy.run.launch import launch_command

    return launch_command(directory, timeout=timeout, only=only)


@cli.command()
@OUTPUT_DIR
@click.option("--timeout", type=float, help="Seconds to wait (default: the longest stop "
              "timeout of the units, plus 30).")
def stop(directory: Path, timeout: float | None) -> int:
    """Stop the fleet warmly: running tasks finish.

    A foreground launch, or the target of one launched with --systemd."""
    from crate_deploy.run.launch import stop_command

    return stop_command(directory, timeout=timeout)


@cli.command()
@click.argument("words", nargs=-1, metavar="[SERVICE]... [DIRECTORY]")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=50, show_default=True,
              help="How many of each service's last lines to show.")
def logs(words: tuple[str, ...], follow: bool, lines: int) -> int:
    """Show the services' output.

    Under systemd, the journal; else the log files a foreground launch writes
    (DIRECTORY/logs/SERVICE.log). SERVICE: a unit name, or worker-POOL, POOL, beat,
    flower; without one, every service."""
    from crate_deploy.run.control import services_and_directory
    from crate_deploy.run.logs import logs_command

    services, directory = services_and_directory(words, DEFAULT_OUTPUT_DIR)
    return logs_command(directory, services, follow=follow, lines=lines)


@cli.command()
@click.argument("words", nargs=-1, metavar="[SERVICE]... [DIRECTORY]")
@click.option("--timeout", type=float, help="Seconds to wait for the new processes (default: "
              "the longest stop timeout of the units, plus 30).")
def restart(words: tuple[str, ...], timeout: float | None) -> int:
    """Restart services warmly.

    Running tasks finish, then each service starts again; waits until it answers.
    Without SERVICE, every service."""
    from crate_deploy.run.control import restart_command, services_and_directory

    services, directory = services_and_directory(words, DEFAULT_OUTPUT_DIR)
    return restart_command(directory, services, timeout=timeout)


@cli.command()
@OUTPUT_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status(directory: Path, as_json: bool) -> int:
    """Say what is up and what each queue holds; exit 1 unless everything is up."""
    from crate_deploy.inspect.status import status_command

    return status_command(directory, as_json=as_json)


@cli.command()
@SITE
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if a key would be renamed.")
def migrate(site: Path, check: bool) -> int:
    """Rename deprecated keys in a site file, keeping its comments and order."""
    from crate_deploy.commands.migrate import migrate_command

    return migrate_command(site, check=check)


@cli.command()
@OUTPUT_DIR
@click.option("--site", "site_path", type=click.Path(path_type=Path, dir_okay=False),
              help="The site file (default: the one the last render was made from).")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False),
              help="Check what `launch --systemd --root ROOT` installed there.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def drift(directory: Path, site_path: Path | None, root: Path | None, as_json: bool) -> int:
    """Say which files differ from what the site renders and launch installed; exit 1 if any."""
    from crate_deploy.commands.drift import drift_command

    return drift_command(directory, site_path=site_path, root=root, as_json=as_json)


@cli.command()
@OUTPUT_DIR
@click.option("--timeout", type=float, default=120.0, show_default=True,
              help="Seconds to let the application import.")
@click.option("--foreground", is_flag=True,
              help="For a foreground launch: skip the systemd sandbox checks.")
def check(directory: Path, timeout: float, foreground: bool) -> int:
    """Pre-flight against the real application; exit 1 if work could not flow."""
    from crate_deploy.inspect.check import check_command

    return check_command(directory, timeout=timeout, foreground=foreground)


@cli.command()
@click.argument("directory", type=click.Path(path_type=Path, file_okay=False), required=False)
@click.argument("queues", nargs=-1)
@click.option("-C", "--directory", "old_directory", hidden=True,
              type=click.Path(path_type=Path, file_okay=False))
@click.option("--to", help="Move to this queue instead of the one each task came from.")
@click.option("--dry-run", is_flag=True, help="List what is parked; move nothing.")
@click.option("--stranded", multiple=True, metavar="QUEUE",
              help="Move the tasks on QUEUE, which no pool consumes, to where the site routes "
              "each one now (repeatable).")
def requeue(directory: Path | None, queues: tuple[str, ...], old_directory: Path | None,
            to: str | None, dry_run: bool, stranded: tuple[str, ...]) -> int:
    """Move dead-lettered tasks (QUEUE.dead) back to their queue, counting them.

    DIRECTORY is the render directory, as for every command (default crate-deploy-out);
    QUEUES are the queues to requeue (default: every queue with dead_letter: true)."""
    from crate_deploy.inspect.requeue import requeue_command

    if old_directory is not None:  # -C DIR: the old spelling, still understood
        click.echo("note: -C is deprecated: give the directory first, as for every command "
                   "(crate-deploy requeue DIRECTORY [QUEUE]...)", err=True)
        queues = (*([str(directory)] if directory else []), *queues)
        directory = old_directory
    elif directory is not None and not directory.is_dir():
        raise UsageError(f"{directory} is not a directory: requeue takes the render directory "
                         "first, as every command does (crate-deploy requeue DIRECTORY "
                         "[QUEUE]...)")
    if stranded:
        if queues or to:
            raise UsageError("--stranded takes no QUEUES or --to: the site's routes decide")
        from crate_deploy.inspect.reroute import reroute_command

        return reroute_command(directory or DEFAULT_OUTPUT_DIR, stranded, dry_run=dry_run)
    return requeue_command(directory or DEFAULT_OUTPUT_DIR, queues, to=to, dry_run=dry_run)
