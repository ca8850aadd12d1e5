"""Run a rendered Deployment's container on this machine the way a kubelet would.

Each "pod" gets its own mount namespace (unshare): a tmpfs at /tmp and at the state
directory (the emptyDirs), the ConfigMap's data bind-mounted read-only at its
mountPath, the root filesystem remounted read-only (readOnlyRootFilesystem), and
the program exec'd (no shell left in between) with every capability dropped and no
new privileges (capabilities.drop ALL, allowPrivilegeEscalation false), with exactly
the container's environment: literal values expanded as the kubelet
expands $(NAME), secretKeyRefs filled from a local secrets file, HOSTNAME from the
pod's name. Probes run inside the same namespace (nsenter), with the same
environment and privileges. Network is the host's: the broker on 127.0.0.1.

Not emulated: runAsNonRoot. The app venvs here use an interpreter under /root (mode
0700), which no other user may run; a real image installs its venv readable by its
USER. The processes run as uid 0 without any capability, so they cannot write
outside the emptyDirs either (the root filesystem is read-only to them).
"""

from __future__ import annotations

import contextlib
import os
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from crate_deploy.inspect.probe import http_status
from tests.kube import command, container, environment

# capabilities.drop: [ALL] and allowPrivilegeEscalation: false, as setpriv spells them.
DROP_PRIVILEGES = ("setpriv", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all",
                   "--no-new-privs", "--")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class Pod:
    """One replica of a Deployment: its single container, started by start()."""

    def __init__(self, deployment: dict[str, Any], name: str, secrets: dict[str, dict[str, str]],
                 config_data: dict[str, str], scratch: Path) -> None:
        self.deployment, self.name = deployment, name
        self.spec = container(deployment)
        self.env = {"PATH": PATH, **environment(self.spec, secrets, pod_name=name)}
        self.env.setdefault("HOSTNAME", name)  # the runtime sets it where the spec does not
        self.argv = command(self.spec, self.env)
        self.grace = int(deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
        self.config_dir = scratch / f"configmap-{name}"  # the ConfigMap volume's files
        self.config_dir.mkdir(mode=0o755)
        for file_name, content in config_data.items():
            (self.config_dir / file_name).write_text(content, encoding="utf-8")
        self.log_path = scratch / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_probe = ""  # what the last exec probe said, for a failure message

    # --- the container ------------------------------------------------------------

    def _mounts(self) -> str:
        """Shell commands that lay out the pod's volumes in a fresh mount namespace."""
        steps = []
        for mount in self.spec["volumeMounts"]:
            path = shlex.quote(mount["mountPath"])
            if mount["name"] == "config":
                steps.append(f"mount --bind {shlex.quote(str(self.config_dir))} {path}")
                steps.append(f"mount -o remount,bind,ro {path}")
            else:  # an emptyDir
                steps.append(f"mkdir -p {path} && mount -t tmpfs -o mode=1777 tmpfs {path}")
        steps.append("mount -o remount,bind,ro /")
        return " && ".join(steps)

    def _enter(self, *argv: str, pid: int | None = None) -> list[str]:
        """argv run with the pod's privileges in its namespace (a new one, or pid's)."""
        workdir = self.spec.get("workingDir", "/")
        as_user = list(DROP_PRIVILEGES)
        if pid is not None:
            return ["nsenter", f"--mount=/proc/{pid}/ns/mnt", f"--wd={workdir}", *as_user, *argv]
        script = f'{self._mounts()} && cd {shlex.quote(workdir)} && exec "$@"'
        return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
                script, "pod", *as_user, *argv]

    def start(self) -> Pod:
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(self._enter(*self.argv), env=self.env,
                                         stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def running_program(self) -> list[str]:
        """What the container's main process runs now (after the execs)."""
        return Path(f"/proc/{self.pid}/cmdline").read_bytes().decode().split("\0")[:-1]

    def runs_its_command(self) -> bool:
        """The main process is the command itself (a script: its interpreter, then it)."""
        running = self.running_program()
        return running[-len(self.argv):] == self.argv or (
            running[1:] == self.argv and Path(running[0]).name.startswith("python"))

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def terminate(self) -> int:
        """What a kubelet does to stop it: SIGTERM to the main process only, SIGKILL to
        everything after terminationGracePeriodSeconds. Returns the exit status, or
        -9 if the grace ran out."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(self.grace)
        except subprocess.TimeoutExpired:
            self.kill()
            return -9

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    # --- probes --------------------------------------------------------------------

    def probe(self, kind: str, timeout: float | None = None) -> int:
        """Run one probe as the kubelet would; its exit status (HTTP: 0 for 2xx/3xx)."""
        probe = self.spec[kind]
        seconds = timeout or float(probe["timeoutSeconds"])
        if "httpGet" in probe:
            port = self.spec["ports"][0]["containerPort"]
            status = http_status(f"http://127.0.0.1:{port}{probe['httpGet']['path']}",
                                 timeout=seconds)
            return 0 if status is not None and 200 <= status < 400 else 1
        argv = probe["exec"]["command"]  # the kubelet does not expand $(NAME) here
        running = self.proc is not None and self.proc.poll() is None
        full = self._enter(*argv, pid=self.pid if running else None)
        try:
            result = subprocess.run(full, env=self.env, capture_output=True, timeout=seconds,
                                    check=False)
        except subprocess.TimeoutExpired:
            self.last_probe = f"{kind}: timed out after {seconds:g}s"
            return 124
        self.last_probe = f"{kind}: exit {result.returncode}: {result.stderr.decode()[-2000:]}"
        return result.returncode

    def wait_probe(self, kind: str, within: float) -> int:
        """Probe every periodSeconds (at most 3 s here) until it passes; the last status."""
        period = min(3.0, float(self.spec[kind]["periodSeconds"]))
        deadline = time.monotonic() + within
        while True:
            status = self.probe(kind)
            if status == 0 or time.monotonic() > deadline:
                return status
            if self.proc is not None and self.proc.poll() is not None:
                return status
            time.sleep(period)
