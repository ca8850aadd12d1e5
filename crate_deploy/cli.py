"""Command line: parse arguments, call a command function, turn errors into exit codes.

Every command function returns an exit code; `main` is the one place that catches
CrateDeployError and prints it (masked, without a traceback).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

# pydantic looks for plugins among every installed distribution's entry points (~30 ms
# per command); the site file's models want none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")

import click

from crate_deploy import __version__
from crate_deploy.errors import CrateDeployError, SiteError, UsageError
from crate_deploy.plan.names import DEFAULT_OUTPUT_DIR
from crate_deploy.secrets import mask

SITE = click.argument("site", type=click.Path(path_type=Path, dir_okay=False),
                      default=Path("site.yaml"))
OUTPUT_DIR = click.argument("directory", type=click.Path(path_type=Path, file_okay=False),
                            default=DEFAULT_OUTPUT_DIR)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="crate-deploy")
def cli() -> None:
    """Deploy a Celery fleet (workers, beat, Flower) from one site file."""


@cli.command()
@SITE
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path, file_okay=False),
              default=DEFAULT_OUTPUT_DIR, show_default=True,
              help="Where a render keeps the probed versions of the target's Celery.")
def validate(site: Path, output_dir: Path) -> int:
    """Check a site file; print every problem as FILE:LINE:COL: KEY: MESSAGE."""
    from crate_deploy.commands.render import validate_command

    return validate_command(site, output_dir)


@cli.command()
@SITE
@click.option("-o", "--output", "output_dir", type=click.Path(path_type=Path, file_okay=False),
              default=DEFAULT_OUTPUT_DIR, show_default=True, help="Directory to render into.")
@click.option("--check", is_flag=True, help="Write nothing; exit 1 if something would change.")
@click.option("--diff", "show_diff", is_flag=True, help="Show what changes, secrets masked.")
def render(site: Path, output_dir: Path, check: bool, show_diff: bool) -> int:
    """Render systemd units, Celery and Flower config for a site file."""
    from crate_deploy.commands.render import render_command

    return render_command(site, output_dir, check=check, show_diff=show_diff)


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
    from crate_deploy.site.model import Site

    click.echo(json.dumps(Site.model_json_schema(), indent=2))
    return 0


@cli.command()
@OUTPUT_DIR
@click.option("--timeout", type=float, default=60.0, show_default=True,
              help="Seconds to wait for every pool and Flower to answer.")
@click.option("--systemd", "use_systemd", is_flag=True,
              help="Install the units into systemd, enable and start the target.")
@click.option("--user", is_flag=True, help="With --systemd: user units (~/.config/systemd/user).")
@click.option("--root", type=click.Path(path_type=Path, file_okay=False),
              help="With --systemd: install into this root offline (systemctl --root).")
def launch(directory: Path, timeout: float, use_systemd: bool, user: bool,
           root: Path | None) -> int:
    """Run the rendered fleet in the foreground (or install it into systemd)."""
    if use_systemd:
        from crate_deploy.run.install import install_command

        return install_command(directory, user=user, root=root, timeout=timeout)
    if user or root:
        raise UsageError("--user and --root go with --systemd")
    from crate_deploy.run.launch import launch_command

    return launch_command(directory, timeout=timeout)


@cli.command()
@OUTPUT_DIR
@click.option("--timeout", type=float, help="Seconds to wait (default: the longest stop "
              "timeout of the units, plus 30).")
def stop(directory: Path, timeout: float | None) -> int:
    """Stop a foreground launch warmly: running tasks finish."""
    from crate_deploy.run.launch import stop_command

    return stop_command(directory, timeout=timeout)


@cli.command()
@OUTPUT_DIR
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def status(directory: Path, as_json: bool) -> int:
    """Say what is up and what each queue holds; exit 1 unless everything is up."""
    from crate_deploy.inspect.status import status_command

    return status_command(directory, as_json=as_json)


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
@click.argument("queues", nargs=-1)
@click.option("-C", "--directory", type=click.Path(path_type=Path, file_okay=False),
              default=DEFAULT_OUTPUT_DIR, show_default=True, help="The render directory.")
@click.option("--to", help="Move to this queue instead of the one each task came from.")
@click.option("--dry-run", is_flag=True, help="List what is parked; move nothing.")
@click.option("--stranded", multiple=True, metavar="QUEUE",
              help="Move the tasks on QUEUE, which no pool consumes, to where the site routes "
              "each one now (repeatable).")
def requeue(queues: tuple[str, ...], directory: Path, to: str | None, dry_run: bool,
            stranded: tuple[str, ...]) -> int:
    """Move dead-lettered tasks (QUEUE.dead) back to their queue, counting them."""
    if stranded:
        if queues or to:
            raise UsageError("--stranded takes no QUEUES or --to: the site's routes decide")
        from crate_deploy.inspect.reroute import reroute_command

        return reroute_command(directory, stranded, dry_run=dry_run)
    from crate_deploy.inspect.requeue import requeue_command

    return requeue_command(directory, queues, to=to, dry_run=dry_run)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `crate-deploy` program."""
    try:
        code = cli.main(args=argv, prog_name="crate-deploy", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        code = 130
    except SiteError as exc:
        for problem in exc.problems:
            click.echo(mask(str(problem)), err=True)
        errors = sum(1 for problem in exc.problems if problem.severity == "error")
        click.echo(f"{errors} error(s): nothing was written", err=True)
        code = exc.exit_code
    except CrateDeployError as exc:
        click.echo(f"crate-deploy: error: {mask(str(exc))}", err=True)
        code = exc.exit_code
    sys.exit(code if isinstance(code, int) else 0)
