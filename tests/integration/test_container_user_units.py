"""User units (`systemd.scope: user`) under a real systemd, as docs/deploy.md section 8 says.

One systemd-nspawn container (systemd 252 as PID 1, tests/systemd_container.py) over
the root .ci/container-rootfs builds, which holds libpam-systemd: without it
`user@UID.service` cannot start ("PAM unable to dlopen(pam_systemd.so)"). Inside it:

1. a user `crate` with the demo site in its home (venv /opt/crate-demo/venv, no `user:`,
   its own 0600 secrets file, config_dir the render directory, state in CONFIG_DIR/state);
   it renders the site itself, as the user would;
2. `launch --systemd` without --user is refused, with troubleshooting.md's message;
3. `loginctl enable-linger crate` starts the user's manager (user@UID.service);
4. `launch --systemd --user` without XDG_RUNTIME_DIR fails at once, with systemctl's
   "Failed to connect to bus" and what to do about it;
5. run as crate with XDG_RUNTIME_DIR=/run/user/UID (`runuser -u crate -- ...`, as the docs
   show), `launch --systemd --user` installs into ~/.config/systemd/user, starts the
   target under the user's manager and reports the fleet ready; `systemctl --user` says
   every unit is active, `status` says all up with each unit's process;
6. every process of every unit runs as crate's uid, in the user manager's cgroup
   (/user.slice/user-UID.slice/user@UID.service/app.slice/UNIT);
7. tasks sent from the host (the test's own vhost of the host's RabbitMQ) run, each on
   the pool owning its queue (node POOL@<container hostname>); `journalctl --user` and
   `crate-deploy logs` show the pools' journals;
8. `crate-deploy stop` stops the fleet under the user manager warmly (a task running
   then finishes and its result arrives): every unit inactive, no process of crate's
   left but its manager, `status` says it is down.

Each step prints `USER-UNITS|step|seconds` (run with -s); nothing is timed in an
assertion. Needs root, systemd-nspawn, that root, and RabbitMQ; skips without them
(fails under CI).

    .ci/container-rootfs
    .venv/bin/pytest -m slow tests/integration/test_container_user_units.py -v -s
"""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import yaml

from tests.integration.conftest import TaskClient, make_client, wait_for
from tests.integration.test_container_fleet import Fleet
from tests.integration.test_launch_systemd_failures import IN_CONTAINER, PACKAGES
from tests.rabbit import broker_problem, temporary_vhost
from tests.systemd_container import (
    APP_DIR,
    REPO_ROOT,
    Container,
    container_available,
    default_rootfs,
    skip_or_fail,
)

pytestmark = pytest.mark.slow

USER = "crate"
HOME = f"/home/{USER}"
SITE = f"{HOME}/site.yaml"
RENDERED = f"{HOME}/rendered"
SECRETS = f"{HOME}/demo-secrets.env"
UNIT_DIR = f"{HOME}/.config/systemd/user"
TARGET = "demo.target"
POOLS = {"quick": "demo-quick", "slow": "demo-slow"}  # pool -> the queue it consumes
CONCURRENCY = {"quick": 4, "slow": 2}  # the demo site's
WORKERS = {pool: f"demo-worker-{pool}.service" for pool in POOLS}
SERVICES = [*WORKERS.values(), "demo-beat.service", "demo-flower.service"]
SLOW_SECONDS = 3.0
PAM_SYSTEMD = "lib/x86_64-linux-gnu/security/pam_systemd.so"


@pytest.fixture(scope="module", autouse=True)
def _requirements() -> None:
    reason = container_available() or broker_problem() or (
        None if PACKAGES.is_dir() else f"no dev venv packages at {PACKAGES}")
    if reason is None and not (default_rootfs() / PAM_SYSTEMD).exists():
        reason = (f"the container root {default_rootfs()} has no libpam-systemd (an older "
                  "recipe): run .ci/container-rootfs")
    if reason:
        skip_or_fail(reason)


@pytest.fixture
def vhost() -> Iterator[str]:
    with temporary_vhost("cd-userunits") as name:
        yield name


class UserSession:
    """The container's user `crate`: commands run as it (runuser, as the docs show)."""

    def __init__(self, ct: Container) -> None:
        self.ct = ct
        ct.run(["useradd", "--create-home", "--shell", "/bin/bash", USER])
        self.uid = int(ct.run(["id", "-u", USER]).stdout)
        self.runtime_dir = f"/run/user/{self.uid}"

    def run(self, args: Sequence[str], *, runtime_dir: bool = True,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
        env = {**IN_CONTAINER, **({"XDG_RUNTIME_DIR": self.runtime_dir} if runtime_dir else {})}
        # runuser -u keeps the environment (but HOME, USER, LOGNAME: the user's).
        return self.ct.run(["runuser", "-u", USER, "--", *args], check=False, env=env,
                           timeout=timeout)

    def crate_deploy(self, *args: str, runtime_dir: bool = True,
                     step: str = "") -> tuple[int, str]:
        """(exit status, stdout + stderr) of crate-deploy run as the user; timed if step."""
        started = time.monotonic()
        result = self.run(["/usr/bin/python3", "-m", "crate_deploy", *args],
                          runtime_dir=runtime_dir)
        if step:
            print(f"USER-UNITS|{step}|exit {result.returncode}|"
                  f"{time.monotonic() - started:.1f}s")
        return result.returncode, result.stdout + result.stderr

    def systemctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(["systemctl", "--user", "--no-pager", *args])

    def states(self) -> dict[str, str]:
        out = self.systemctl("show", "--property=Id,ActiveState", TARGET, *SERVICES).stdout
        ids = [line.split("=", 1)[1] for line in out.splitlines() if line.startswith("Id=")]
        active = [line.split("=", 1)[1] for line in out.splitlines()
                  if line.startswith("ActiveState=")]
        return dict(zip(ids, active, strict=True))

    def journals(self) -> str:
        return "\n".join(f"--- {unit} ---\n" + self.run(
            ["journalctl", "--user", "--no-pager", "-n", "40", "-u", unit]).stdout
            for unit in SERVICES)


def user_site(fleet: Fleet) -> str:
    """The demo site for the user's manager: no user:, the secrets in the user's home,
    config_dir and state_dir their defaults (the render directory, CONFIG_DIR/state)."""
    site = dict(fleet.site)
    del site["user"]
    site.update({"secrets_file": SECRETS, "paths": {}, "systemd": {"scope": "user"}})
    return yaml.safe_dump(site, sort_keys=False)


def test_user_units_under_a_user_manager(tmp_path: Path, vhost: str) -> None:
    fleet = Fleet(tmp_path, vhost)
    started = time.monotonic()
    with Container(bind_ro=[(fleet.app_dir, APP_DIR), (REPO_ROOT, str(REPO_ROOT))]) as ct:
        print(f"USER-UNITS|boot|{ct.boot_seconds:.1f}s")
        fleet.hostname = ct.run(["hostname"]).stdout.strip()
        user = UserSession(ct)
        try:
            _exercise(user, fleet)
        except BaseException:
            print(user.journals())
            print(ct.journal(f"user@{user.uid}.service", lines=60))
            raise
    print(f"USER-UNITS|total|{time.monotonic() - started:.1f}s")


def _exercise(user: UserSession, fleet: Fleet) -> None:
    ct = user.ct
    # 1. the site and its secrets in the user's home, rendered by the user.
    ct.write_file(SITE, user_site(fleet))
    ct.write_file(SECRETS, fleet.secrets, mode=0o600)
    ct.run(["chown", f"{USER}:{USER}", SITE, SECRETS])
    code, said = user.crate_deploy("render", SITE, "-o", RENDERED, step="render")
    assert code == 0 and "for Celery 5.2.7" in said, said

    # 2. the system manager is not the one these units are for.
    code, said = user.crate_deploy("launch", "--systemd", RENDERED)
    assert code == 2, said
    assert said.strip() == (f"crate-deploy: error: {RENDERED} was rendered for the user "
                            "manager (systemd.scope: user): add --user"), said
    assert ct.run(["test", "-e", UNIT_DIR], check=False).returncode == 1

    # 3. lingering starts the user's manager (user@UID.service, through pam_systemd).
    t0 = time.monotonic()
    ct.run(["loginctl", "enable-linger", USER])
    manager = f"user@{user.uid}.service"
    wait_for(lambda: ct.run(["test", "-S", f"{user.runtime_dir}/systemd/private"],
                            check=False).returncode == 0, 60,
             what=f"{manager} to listen", describe=lambda: ct.journal(manager, lines=40))
    assert ct.systemctl("is-active", manager).stdout.strip() == "active"
    assert f"{user.uid} {USER} yes" in " ".join(ct.run(["loginctl", "list-users"]).stdout.split())
    print(f"USER-UNITS|linger to manager|{time.monotonic() - t0:.1f}s")

    # 4. without XDG_RUNTIME_DIR, systemctl --user does not find that manager.
    code, said = user.crate_deploy("launch", "--systemd", "--user", RENDERED,
                                   runtime_dir=False, step="no XDG_RUNTIME_DIR")
    assert code == 1, said
    assert said.strip().splitlines()[-1] == (
        f"crate-deploy: the units are installed in {UNIT_DIR} but not enabled: no systemd "
        f"user manager answers for {USER} (Failed to connect to bus: No medium found): "
        "XDG_RUNTIME_DIR is not set, and systemctl --user finds the manager through it; run "
        f"with XDG_RUNTIME_DIR={user.runtime_dir}"), said

    # 5. as the docs say: installed, enabled, started by the user's manager, ready.
    code, said = user.crate_deploy("launch", "--systemd", "--user", RENDERED,
                                   step="launch --systemd --user")
    assert code == 0, said
    assert f"enabled: {TARGET} {' '.join(SERVICES)}" in said, said
    assert f"5 unit(s) enabled in {UNIT_DIR}; {TARGET} started" in said, said
    assert "ready in" in said.strip().splitlines()[-1], said
    link = user.run(["readlink", f"{UNIT_DIR}/default.target.wants/{TARGET}"]).stdout.strip()
    assert link == f"{UNIT_DIR}/{TARGET}", link
    assert user.states() == dict.fromkeys([TARGET, *SERVICES], "active"), user.states()
    assert user.systemctl("status", TARGET).returncode == 0
    # The state directory (CONFIG_DIR/state) is the user's: launch made it.
    assert ct.run(["stat", "-c", "%a %U", f"{RENDERED}/state"]).stdout.split() == ["700", USER]
    code, said = user.crate_deploy("status", RENDERED, step="status")
    assert code == 0 and said.startswith("demo: all up"), said
    main_pids = {unit: int(user.systemctl("show", "--property=MainPID", "--value",
                                          unit).stdout) for unit in SERVICES}
    lines = {line.split()[1]: line.split()[2:5] for line in said.splitlines()
             if line.startswith("process ")}
    for unit, pid in main_pids.items():
        assert pid > 0 and lines[unit] == ["active", "pid", str(pid)], (unit, pid, said)

    # 6. every process of every unit: crate's uid, in the user manager's cgroup.
    for unit in SERVICES:
        cgroup = user.systemctl("show", "--property=ControlGroup", "--value", unit).stdout.strip()
        assert cgroup == f"/user.slice/user-{user.uid}.slice/{manager}/app.slice/{unit}", cgroup
        pids = ct.run(["cat", f"/sys/fs/cgroup{cgroup}/cgroup.procs"]).stdout.split()
        assert str(main_pids[unit]) in pids, (unit, pids)
        pool = next((p for p, u in WORKERS.items() if u == unit), None)
        if pool:  # the main process and its pool's children
            assert len(pids) >= 1 + CONCURRENCY[pool], (unit, pids)
        for process in pids:
            status = ct.run(["cat", f"/proc/{process}/status"]).stdout
            uids = next(line.split()[1:] for line in status.splitlines()
                        if line.startswith("Uid:"))
            assert uids == [str(user.uid)] * 4, (unit, process, uids)

    # 7. tasks from the host, each run by the pool owning its queue.
    client = TaskClient(make_client(fleet.broker_url))
    try:
        _tasks_and_stop(user, fleet, client)
    finally:
        client.app.close()


def _tasks_and_stop(user: UserSession, fleet: Fleet, client: TaskClient) -> None:
    ct = user.ct
    t0 = time.monotonic()
    nodes = {pool: f"{pool}@{fleet.hostname}" for pool in POOLS}
    quick = client.send_many("demoapp.quick", POOLS["quick"], [{"value": n} for n in range(12)])
    slow = client.send_many("demoapp.slow", POOLS["slow"],
                            [{"seconds": 0.2, "value": n} for n in range(4)])
    done = client.gather(quick + slow, timeout=60)
    assert [r["value"] for r in done] == [*range(12), *range(4)]
    assert {r["node"] for r in done[:12]} == {nodes["quick"]}
    assert {r["node"] for r in done[12:]} == {nodes["slow"]}
    assert {r["host"] for r in done} == {fleet.hostname}
    print(f"USER-UNITS|16 tasks|{time.monotonic() - t0:.1f}s")
    journal = user.run(["journalctl", "--user", "--no-pager", "-u", WORKERS["quick"]]).stdout
    assert f"{nodes['quick']} ready." in journal, journal
    code, said = user.crate_deploy("logs", "slow", RENDERED, "-n", "200")
    assert code == 0 and f"{nodes['slow']} ready." in said, said
    assert fleet.flower_password not in said

    # 8. stop, with a task running: it finishes (a warm stop), then nothing is left.
    running = client.send("demoapp.slow", POOLS["slow"], seconds=SLOW_SECONDS, value=99)
    wait_for(lambda: client.active(POOLS["slow"]), 30, what="the slow task to start")
    code, said = user.crate_deploy("stop", RENDERED, step="stop")
    assert code == 0, said
    assert re.fullmatch(rf"crate-deploy: stopping {TARGET} \(systemctl --user stop\); running "
                        r"tasks may take up to \d+s to finish\n"
                        rf"crate-deploy: stopped {TARGET}; `systemctl --user start {TARGET}` "
                        "starts it again\n", said), said
    assert client.gather([running], timeout=10) == [
        {"value": 99, "node": nodes["slow"], "host": fleet.hostname}]
    assert user.states() == dict.fromkeys([TARGET, *SERVICES], "inactive"), (said, user.states())
    left = ct.run(["ps", "-u", str(user.uid), "-o", "comm="]).stdout.split()
    assert sorted(left) == ["(sd-pam)", "systemd"], left  # the manager itself
    code, said = user.crate_deploy("status", RENDERED)
    assert code == 1 and said.startswith("demo: NOT all up"), said
    down = [line.split()[:3] for line in said.splitlines() if line.startswith("pool ")]
    assert down == [["pool", pool, "DOWN"] for pool in POOLS], said
