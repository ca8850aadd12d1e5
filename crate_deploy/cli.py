"""Command line: run a command, turn errors into exit codes.

`main` is the one place that catches errors and prints them (masked, without a
traceback): CrateDeployError with its own exit code, anything unforeseen as one line
with exit 3, Ctrl-C with 130. The commands and their options are in commands/group.py,
imported only once the unchanged-render fast path (commands/unchanged.py) has stepped
aside: a `render` of an unchanged site answers without click, pydantic or Jinja, and a
`render` whose command line that path understood, or a plain `validate`, runs without
click (importing it is a twentieth of either).
"""

from __future__ import annotations

import gc
import os
import stat
import sys

TYPE_CHECKING = False  # pathlib and typing wait for the full path: the fast path needs neither
if TYPE_CHECKING:
    from pathlib import Path

# pydantic looks for plugins among every installed distribution's entry points (~30 ms
# per command), and imports importlib.metadata to do so (~15 ms, see site/plugins.py):
# the site file's models want none.
os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")


def main(argv: list[str] | None = None) -> None:
    """Entry point of the `crate-deploy` program."""
    program = argv is None  # not a caller in the same process, as the tests are
    if program:
        # A command makes a few hundred thousand objects that live until it exits
        # (modules, pydantic's schemas, Jinja's code): Python's default thresholds walk
        # them some 70 times, ~12 ms of a first render, finding next to nothing to free.
        # Collect less often (a long-running launch still collects).
        gc.set_threshold(100_000, 50, 100)
    code = _command(sys.argv[1:] if argv is None else list(argv), program=program)
    if program:
        # The program is about to exit: the interpreter's last garbage collection would
        # walk every object the command made, 25-35 ms of a render, to find cycles the
        # exit frees anyway; frozen objects are left alone (at-exit handlers still run,
        # and stdout and stderr are still flushed).
        gc.freeze()
    sys.exit(code if isinstance(code, int) else 0)


def _command(args: list[str], *, program: bool) -> object:
    """Run the command line's command: its exit code, or what its error makes it. Ctrl-C
    and a reader of stdout that went away end it as click ends its commands, whichever
    path ran: "aborted" and 130; 1, quietly."""
    try:
        code = _fast_render(args)
        if code is not None:
            return code
        if program and args[:1] and not args[0].startswith("-"):
            from crate_deploy.site.plugins import skip_plugin_search

            skip_plugin_search()  # a command: it builds the site's models
        code = _without_click(args)
        return code if code is not None else _run(args)
    except KeyboardInterrupt:
        sys.stderr.write("\naborted\n")
        return 130
    except BrokenPipeError:
        return _reader_gone()
    except Exception as exc:
        return _failed(exc)


def _reader_gone() -> int:
    """stdout's reader went away (`| head -1`): exit 1 without a word, and without the
    interpreter's complaint when it flushes stdout at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no stdout to quieten
        pass
    return 1


def _fast_render(args: list[str]) -> int | None:
    """The exit code of an unchanged render answered from its record, or None."""
    if args[:1] != ["render"]:
        return None
    from crate_deploy.commands.unchanged import fast_render

    return fast_render(args[1:])


def _without_click(args: list[str]) -> int | None:
    """The exit code of a plain `render` or `validate` command line, run without click
    (importing it is a twentieth of either), or None: anything else is click's to read."""
    if args[:1] == ["render"]:
        return _full_render(args[1:])
    if args[:1] == ["validate"]:
        return _validate(args[1:])
    return None


def _full_render(args: list[str]) -> int | None:
    """The full render, for a command line the fast path read (the way click would), or
    None: anything else (--help, --all-hosts, an option spelled otherwise, a SITE that is
    a directory) is click's."""
    from pathlib import Path

    from crate_deploy.commands.unchanged import parse_args

    parsed = parse_args(args)
    if parsed is None:
        return None
    site, directory = Path(parsed.site), Path(parsed.directory)
    # click refuses a SITE that is a directory and a DIRECTORY that is a file: its words.
    if _file_type(site) == stat.S_IFDIR or _file_type(directory) == stat.S_IFREG:
        return None
    from crate_deploy.commands.render import render_command

    return render_command(site, directory, check=parsed.check,
                          show_diff=parsed.show_diff, as_json=parsed.as_json,
                          host=parsed.host, force=parsed.force, verbose=parsed.verbose,
                          target=parsed.target)


def _validate(args: list[str]) -> int | None:
    """validate's site files, when the command line is nothing else (no option, printable
    ASCII, no SITE that is a directory: those are click's)."""
    from pathlib import Path

    from crate_deploy.commands.unchanged import plain_argument

    if not all(plain_argument(arg) and not arg.startswith("-") for arg in args):
        return None
    sites = [Path(arg) for arg in args]
    if any(_file_type(site) == stat.S_IFDIR for site in sites):
        return None
    from crate_deploy.commands.validate_files import validate_sites

    return validate_sites(sites)


def _file_type(path: Path) -> int | None:
    """The kind of file at `path` (stat.S_IFDIR ...), or None when it cannot be asked
    (missing, a name too long, no access): click passes such a path on, and the command
    says what is wrong with it."""
    try:
        return stat.S_IFMT(path.stat().st_mode)
    except OSError:
        return None


def _run(args: list[str]) -> object:
    import click

    from crate_deploy.commands.group import cli

    try:
        return cli.main(args=args, prog_name="crate-deploy", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        return 130


def _failed(exc: Exception) -> int:
    """Report an error: a site's problems, crate-deploy's own errors, or one masked line."""
    import click

    from crate_deploy.errors import CrateDeployError, SiteError
    from crate_deploy.secrets import mask

    if isinstance(exc, SiteError):
        for problem in exc.problems:
            click.echo(mask(str(problem)), err=True)
        errors = sum(1 for problem in exc.problems if problem.severity == "error")
        click.echo(f"{errors} error(s): nothing was written", err=True)
        return exc.exit_code
    if isinstance(exc, CrateDeployError):
        click.echo(f"crate-deploy: error: {mask(str(exc))}", err=True)
        return exc.exit_code
    return _unexpected(exc)  # anything else (OSError, kombu's errors): one masked line


def _unexpected(exc: Exception) -> int:
    """Report an error crate-deploy did not foresee: one line, masked, exit 3; the
    traceback (masked too) only when CRATE_DEPLOY_DEBUG is set."""
    import traceback

    import click

    from crate_deploy.secrets import mask

    if os.environ.get("CRATE_DEPLOY_DEBUG"):
        click.echo(mask("".join(traceback.format_exception(exc))), err=True, nl=False)
    text = " ".join(str(exc).split()) or "(no message)"
    click.echo(f"crate-deploy: unexpected error: {type(exc).__name__}: {mask(text)} (set "
               "CRATE_DEPLOY_DEBUG=1 for the traceback)", err=True)
    return 3
