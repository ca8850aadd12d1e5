"""Under systemd, what the foreground launch's EarlyExits sees: which unit exited while
the fleet was starting, with what status, and its last journal lines.

A foreground launch is told of every exit by its supervisor. `launch --systemd` and
`restart` under systemd are not, so each readiness poll asks systemd instead
(`systemctl show`): a main process that exited since we started the units (its exit
timestamp is later than ours), or a unit systemd marked failed (its start limit hit,
or a status Restart= does not restart). Each exit goes to the same EarlyExits, with
the unit's last journal lines, so the same exits count as certain failures with the
same causes and words (run/failure.py); a unit systemd gave up on is certain as well.

The monotonic clocks compared are the kernel's CLOCK_MONOTONIC on both sides (systemd's
*TimestampMonotonic properties, Python's time.monotonic()), one clock per machine.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import click

from crate_deploy.inspect.readiness import wait_until_ready
from crate_deploy.run.failure import EarlyExits, Failure, cause_from_output, classify_early_exit
from crate_deploy.run.failure import explain as explain_cause
from crate_deploy.run.outcome import report_failure, report_not_ready
from crate_deploy.run.policy import describe_returncode
from crate_deploy.state.deployment import Deployment, broker_urls, masker_for, read_secrets

JOURNAL_LINES = 60
_START_LIMIT = "Start request repeated too quickly"  # systemd's words, in the unit's journal
_SETTLE_SEC, _SETTLE_READS = 0.2, 10  # how long a journal may still be taking in output
_PROPERTIES = ("Id", "ActiveState", "SubState", "Result", "ExecMainCode", "ExecMainStatus",
               "ExecMainExitTimestampMonotonic", "StateChangeTimestampMonotonic")
# ExecMainCode: how the main process ended, as waitid(2) says (CLD_EXITED, CLD_KILLED,
# CLD_DUMPED); ExecMainStatus is then its exit code or the signal.
_EXITED, _KILLED, _DUMPED = 1, 2, 3


@dataclass
class UnitWatch:
    """Polls the units (names with .service) for exits since `started` (monotonic s)."""

    units: Sequence[str]
    user: bool
    early: EarlyExits
    started: float = field(default_factory=time.monotonic)
    # CLOCK_REALTIME at the start, for the journal's --since.
    since: float = field(default_factory=time.time)
    _seen: dict[str, int] = field(default_factory=dict)  # unit -> last exit timestamp seen
    stopped: list[str] = field(default_factory=list)  # what a certain failure stopped

    @classmethod
    def starting_now(cls, units: Sequence[str], *, user: bool, ours: Sequence[str],
                     stop: Callable[[Sequence[str]], None]) -> UnitWatch:
        """A watch for units (re)started from now on. On a certain failure it stops `ours`
        (what this launch started or restarted, as a foreground launch stops its fleet:
        systemd would restart the failing ones into the same failure); units that were
        running before and left alone keep running."""
        watch: UnitWatch

        def stop_ours() -> None:
            watch.stopped = list(ours)
            if ours:
                stop(ours)

        early = EarlyExits(last_lines=lambda unit: watch.settled_journal(unit), stop=stop_ours)
        watch = cls(list(units), user, early)
        return watch

    @property
    def failure(self) -> Failure | None:
        return self.early.failure

    def alive(self) -> bool:
        """For wait_until_ready: False once a unit failed for certain."""
        if self.early.failure is None and not self.early.ready.is_set():
            self.poll()
        return self.early.failure is None

    def poll(self) -> None:
        """Report every exit since the last poll to EarlyExits; a failed unit is final."""
        for unit in self._show():
            name = unit.get("Id", "")
            if name not in self.units:
                continue
            exited = _usec(unit.get("ExecMainExitTimestampMonotonic"))
            if exited > self.started * 1e6 and self._seen.get(name) != exited:
                self._seen[name] = exited
                self.early.on_exit(name, _returncode(unit), will_restart=True)
            changed = _usec(unit.get("StateChangeTimestampMonotonic"))
            if (unit.get("ActiveState") == "failed" and changed > self.started * 1e6
                    and self.early.failure is None):
                self._gave_up(name, unit)
            if self.early.failure is not None:
                return

    def _gave_up(self, name: str, unit: dict[str, str]) -> None:
        """systemd will not restart it: its start limit was hit, or Restart= said no."""
        lines = tuple(self.settled_journal(name))
        returncode = _returncode(unit)
        # After restarts the Result stays the last run's (exit-code); the manager says
        # why it gave up in the unit's journal.
        limit = unit.get("Result") == "start-limit-hit" or any(
            _START_LIMIT in line for line in lines)
        why = "start limit hit: a crash loop" if limit else f"result {unit.get('Result')}"
        failure = classify_early_exit(name, returncode, lines)
        if failure is None:
            raw = cause_from_output(lines)
            said = f": {explain_cause(raw)}" if raw else ""
            failure = Failure(name, f"systemd gave up on it ({why}; last "
                              f"{describe_returncode(returncode)}){said}", lines)
        elif limit:
            failure = Failure(name, f"{failure.cause} ({why})", lines)
        count = self.early.exits.get(name, (0, 0))[0]
        self.early.exits[name] = (max(count, 1), returncode)
        self.early.failure = failure
        self.early.stop()

    def settled_journal(self, unit: str) -> list[str]:
        """The unit's last lines once journald has taken in all its output.

        A process's last lines reach the journal through its stream, which journald may
        still be reading when systemd has seen the process exit. `journalctl --sync`
        (systemd 246+, root) returns once everything already sent is stored, stream data
        included; without it, read until two reads agree."""
        if self._sync():
            return self.journal(unit)
        lines = self.journal(unit)
        for _ in range(_SETTLE_READS):
            time.sleep(_SETTLE_SEC)
            again = self.journal(unit)
            if again == lines:
                break
            lines = again
        return lines

    def _sync(self) -> bool:
        if self.user:
            return False  # asks the system journal, which is root's
        try:
            return subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=30,
                                  check=False).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            return False

    def journal(self, unit: str, lines: int = JOURNAL_LINES) -> list[str]:
        """The unit's last lines in the journal since the watch began (messages only).

        Tailed here: journalctl 252 given both --since and --lines shows the first lines
        after --since, not the last ones."""
        argv = ["journalctl", *self._scope(), "--no-pager", "--output=cat",
                f"--since=@{self.since - 1:.0f}", f"--unit={unit}"]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, errors="replace",
                                    timeout=30, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return []
        return result.stdout.splitlines()[-lines:]

    def _show(self) -> list[dict[str, str]]:
        argv = ["systemctl", *self._scope(), "show",
                *(f"--property={name}" for name in _PROPERTIES), *self.units]
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                                    check=False)
        except (OSError, subprocess.TimeoutExpired):
            return []
        units: list[dict[str, str]] = []
        for block in result.stdout.split("\n\n"):
            pairs = (line.split("=", 1) for line in block.splitlines() if "=" in line)
            units.append(dict(pairs))
        return units

    def _scope(self) -> list[str]:
        return ["--user"] if self.user else []


def _answered_states(units: Sequence[str], user: bool) -> dict[str, str]:
    """The ActiveState of each unit systemctl answered for."""
    watch = UnitWatch(units, user, EarlyExits(last_lines=lambda unit: [], stop=lambda: None))
    return {unit["Id"]: unit.get("ActiveState", "") for unit in watch._show()
            if unit.get("Id") in units}


def unit_states(units: Sequence[str], *, user: bool) -> dict[str, str] | None:
    """Each unit's ActiveState (active, activating, deactivating, inactive, failed...),
    or None when systemctl did not answer for them."""
    states = _answered_states(units, user)
    return states if set(states) == set(units) else None


def active_units(units: Sequence[str], *, user: bool) -> list[str]:
    """The units that are active (running) now."""
    return [unit for unit, state in _answered_states(units, user).items() if state == "active"]


def _usec(value: str | None) -> int:
    return int(value) if value and value.isdigit() else 0


def _returncode(unit: dict[str, str]) -> int:
    """The main process's end as Popen says it: its exit code, or minus the signal."""
    code, status = _usec(unit.get("ExecMainCode")), _usec(unit.get("ExecMainStatus"))
    return -status if code in (_KILLED, _DUMPED) else status


def wait_for_units(deployment: Deployment, watch: UnitWatch, *, timeout: float) -> int:
    """Wait until the started units' pools (and Flower) answer, as a foreground launch
    does; at the first certain failure, stop there: the unit's last journal lines, then
    one line naming the unit and the cause. 0 when ready, else 1."""
    site = deployment.site
    secrets = read_secrets(site)
    mask = masker_for(secrets)

    def say(text: str) -> None:
        click.echo(mask(text))

    ready = wait_until_ready(site, broker_urls(site, secrets), secrets, mask, timeout=timeout,
                             alive=watch.alive, say=say, share=deployment.host)
    if ready:
        watch.early.ready.set()
        return 0
    scope = " --user" if watch.user else ""
    if watch.failure is not None:
        if watch.stopped:
            say(f"stopped {', '.join(watch.stopped)} (started by this run; systemd would "
                "restart a failing unit into the same failure): fix the cause, then "
                f"`crate-deploy launch --systemd{scope} {deployment.directory}` starts them "
                "again")
        return report_failure(say, watch.failure)
    report_not_ready(say, watch.early, watch.journal)
    click.echo(f"crate-deploy: see `systemctl{scope} status {deployment.target}` and "
               f"`journalctl{scope} -u {deployment.services[0]}`", err=True)
    return 1
