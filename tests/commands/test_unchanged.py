"""The unchanged-render fast path: it answers only when nothing that affects the output
changed, and then says exactly what the full render says.

Whether it answered is read from its CRATE_DEPLOY_DEBUG line, never from timing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crate_deploy.commands.unchanged import FORMAT, RENDER_RECORD_FILE, parse_args
from tests.conftest import EXAMPLES, ROOT, Result

ANSWERED = "crate-deploy: debug: the fast path answered"
STEPS_ASIDE = "crate-deploy: debug: the fast path steps aside: "
PYTHON = os.path.realpath(sys.executable)


def without_debug(text: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True)
                   if not line.startswith("crate-deploy: debug: "))


@pytest.fixture
def debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CRATE_DEPLOY_DEBUG", "1")
    monkeypatch.delenv("CRATE_DEPLOY_FAST_PATH", raising=False)


def full_render(run_cli: Callable[..., Result], monkeypatch: pytest.MonkeyPatch,
                *args: str | Path) -> Result:
    """The same command with the fast path turned off."""
    with monkeypatch.context() as patch:
        patch.setenv("CRATE_DEPLOY_FAST_PATH", "0")
        result = run_cli(*args)
    assert STEPS_ASIDE + "CRATE_DEPLOY_FAST_PATH=0" in result.err
    return result


# --- the same words, whichever path answers ----------------------------------------------

EXAMPLE_COMMANDS = {
    "site": ["site.yaml"],
    "minimal": ["minimal.yaml"],
    "kubernetes": ["kubernetes.yaml", "--target", "kubernetes"],
    "multi-host": ["multi-host.yaml", "--host", "web2.internal"],
    "demo": ["demo/site.yaml"],
}
FLAGS = [[], ["-v"], ["--check"], ["--diff"], ["--json"], ["--check", "--json"],
         ["--check", "--diff", "-v"], ["--diff", "--json", "-v"], ["--force", "--verbose"]]


@pytest.mark.parametrize("example", sorted(EXAMPLE_COMMANDS))
def test_an_unchanged_example_reads_the_same_from_both_paths(
        example: str, tmp_path: Path, run_cli: Callable[..., Result], debug: None,
        monkeypatch: pytest.MonkeyPatch) -> None:
    site, *options = EXAMPLE_COMMANDS[example]
    out = tmp_path / "out"
    first = run_cli("render", EXAMPLES / site, "-o", out, *options)
    assert first.code == 0, first.err
    for flags in FLAGS:
        command: list[str | Path] = ["render", EXAMPLES / site, "-o", out, *options, *flags]
        fast = run_cli(*command)
        assert ANSWERED in fast.err, (flags, fast.err)
        full = full_render(run_cli, monkeypatch, *command)
        assert (fast.code, fast.out, without_debug(fast.err)) == (
            full.code, full.out, without_debug(full.err)), flags
        assert "0 file(s)" in fast.out or '"changed": 0' in fast.out


def test_the_program_prints_the_same_in_the_same_order_either_way(tmp_path: Path) -> None:
    """Through the real program, stderr and stdout into one pipe: the same bytes, in the
    same order (the notes first), from the fast path and from the full render."""
    program = str(Path(sys.executable).parent / "crate-deploy")
    out = tmp_path / "out"
    site = EXAMPLES / "demo/site.yaml"  # a probed venv, notes and warnings on stderr
    subprocess.run([program, "render", str(site), "-o", str(out)], check=True,
                   capture_output=True, cwd=tmp_path)
    for flags in ([], ["--check", "-v"], ["--diff", "--json"]):
        outputs = []
        for fast_path in ("1", "0"):
            environment = {**os.environ, "CRATE_DEPLOY_FAST_PATH": fast_path,
                           "CRATE_DEPLOY_DEBUG": "1"}
            outputs.append(subprocess.run(
                [program, "render", str(site), "-o", str(out), *flags], env=environment,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path, check=False))
        fast, full = outputs
        assert ANSWERED.encode() in fast.stdout
        assert (fast.returncode, without_debug(fast.stdout.decode())) == (
            full.returncode, without_debug(full.stdout.decode())), flags
        assert b"0 file(s)" in fast.stdout or b'"changed": 0' in fast.stdout


def test_the_fast_path_loads_neither_the_models_nor_jinja_nor_click(tmp_path: Path) -> None:
    out = tmp_path / "out"
    program = Path(sys.executable).parent / "crate-deploy"
    command = [str(program), "render", str(EXAMPLES / "site.yaml"), "-o", str(out)]
    subprocess.run(command, check=True, capture_output=True)
    probe = textwrap.dedent(f"""\
        import sys
        from crate_deploy.cli import main
        try:
            main({command[1:]!r})
        except SystemExit as exc:
            code = exc.code
        loaded = [name for name in ("pydantic", "jinja2", "click", "yaml",
                                    "crate_deploy.site.model", "crate_deploy.render")
                  if name in sys.modules]
        print(code, loaded, file=sys.stderr)
        """)
    environment = {**os.environ, "CRATE_DEPLOY_DEBUG": "1"}
    environment.pop("CRATE_DEPLOY_FAST_PATH", None)
    # Twice: the program's sys.path starts with its bin directory, `python -c`'s with the
    # working directory; the first run, full, records for the second.
    for _ in range(2):
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True,
                                text=True, env=environment, cwd=tmp_path, check=False)
    assert ANSWERED in result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == "0 []"


# --- every input: changed, the fast path steps aside and the render says so -----------


@dataclass
class Scenario:
    """A site with a relative venv (a symbolic link to a venv whose celery is probed), a
    secrets file, and its output directory."""

    root: Path
    run: Callable[..., Result]
    args: list[str | Path] = field(default_factory=list)

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def site(self) -> Path:
        return self.root / "site.yaml"

    def render(self, *extra: str | Path) -> Result:
        return self.run("render", *(self.args or [self.site, "-o", self.out]), *extra)


SITE = """\
    project: demo
    app: demo.app
    venv: venv
    secrets_file: secrets.env
    broker:
      urls: ["amqp://demo:${BROKER_PASSWORD}@127.0.0.1:5672//"]
    workers:
      - name: quick
        queues: [celery]
        concurrency: 2
"""


def make_venv(path: Path, celery: str = "5.2.7") -> None:
    """A venv as Python sees one (pyvenv.cfg, bin/python) with celery's metadata only:
    enough for the probe, which reads distribution metadata."""
    (path / "bin").mkdir(parents=True)
    (path / "pyvenv.cfg").write_text(f"home = {Path(PYTHON).parent}\n")
    (path / "bin/python").symlink_to(PYTHON)
    celery_program = path / "bin/celery"
    celery_program.write_text(f"#!{path}/bin/python\n")
    celery_program.chmod(0o755)
    set_celery(path, celery)


def set_celery(venv: Path, version: str) -> None:
    packages = venv / "lib/python3.11/site-packages"
    for old in packages.glob("celery-*.dist-info"):
        shutil.rmtree(old)
    info = packages / f"celery-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: celery\nVersion: {version}\n")


@pytest.fixture
def scenario(tmp_path: Path, run_cli: Callable[..., Result], debug: None,
             monkeypatch: pytest.MonkeyPatch) -> Scenario:
    # Inputs a change below moves are put back after the test.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYDANTIC_DISABLE_PLUGINS", os.environ["PYDANTIC_DISABLE_PLUGINS"])
    (tmp_path / "imports").mkdir()
    monkeypatch.setattr(sys, "path", [*sys.path, str(tmp_path / "imports")])
    make_venv(tmp_path / "venv-a")
    (tmp_path / "venv").symlink_to("venv-a")
    (tmp_path / "secrets.env").write_text("BROKER_PASSWORD=Secret-Value-1234\n")
    (tmp_path / "site.yaml").write_text(textwrap.dedent(SITE))
    scene = Scenario(tmp_path, run_cli)
    first = scene.render()
    assert first.code == 0, first.err
    assert "for Celery 5.2.7, probed" in first.out
    again = scene.render()
    assert ANSWERED in again.err, again.err
    assert again.out == f"0 file(s) changed, 7 unchanged in {scene.out} (for Celery 5.2.7, " \
        "probed)\n"
    return scene


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


def retarget_venv(scene: Scenario) -> None:
    shutil.copytree(scene.root / "venv-a", scene.root / "venv-b", symlinks=True)
    (scene.root / "venv").unlink()
    (scene.root / "venv").symlink_to("venv-b")


def unit(scene: Scenario) -> Path:
    return scene.out / "systemd/demo-worker-quick.service"


def swap_for_link(path: Path) -> None:
    content = path.read_bytes()
    path.unlink()
    (path.parent / "elsewhere").write_bytes(content)
    path.symlink_to("elsewhere")


def link_systemd_folder(scene: Scenario) -> None:
    folder = scene.out / "systemd"
    folder.rename(scene.root / "real-systemd")
    folder.symlink_to(scene.root / "real-systemd")


def add_to_manifest(scene: Scenario) -> None:
    manifest = scene.out / ".crate-deploy-manifest.json"
    document = json.loads(manifest.read_text())
    document["files"]["old.conf"] = "0" * 64
    manifest.write_text(json.dumps(document))
    (scene.out / "old.conf").write_text("left from an earlier render\n")


def changed(name: str) -> Callable[[Result], bool]:
    return lambda result: result.code == 0 and any(
        line.split()[:1] == ["changed"] and line.endswith(name)
        for line in result.out.splitlines())


def said(text: str, code: int = 0) -> Callable[[Result], bool]:
    return lambda result: result.code == code and text in result.out + result.err


@dataclass(frozen=True)
class Change:
    name: str
    make: Callable[[Scenario], object]
    reason: str  # how the fast path says why it stepped aside
    reported: Callable[[Result], bool]  # the full render says what changed


CHANGES = [
    Change("site file", lambda s: edit(s.site, "concurrency: 2", "concurrency: 3"),
           "input changed: read ", changed("demo-worker-quick.service")),
    Change("secrets file", lambda s: edit(s.root / "secrets.env", "BROKER_", "BROKR_"),
           "input changed: read ", said("${BROKER_PASSWORD} is not defined", 2)),
    Change("where a relative path leads", retarget_venv, "input changed: resolve ",
           changed("demo-worker-quick.service")),
    Change("the venv's distributions", lambda s: set_celery(s.root / "venv-a", "5.3.1"),
           "input changed: stamp ", said("for Celery 5.3.1, probed")),
    Change("the venv's celery program", lambda s: (s.root / "venv-a/bin/celery").unlink(),
           "input changed: exists ", said("is not on this machine")),
    Change("a rendered file's content", lambda s: edit(unit(s), "Restart", "#Restart"),
           "output changed: systemd/demo-worker-quick.service",
           changed("demo-worker-quick.service")),
    Change("a rendered file deleted", lambda s: unit(s).unlink(),
           "output changed: systemd/demo-worker-quick.service",
           said("created  ")),
    Change("a rendered file's mode", lambda s: unit(s).chmod(0o600),
           "output changed: systemd/demo-worker-quick.service",
           changed("demo-worker-quick.service")),
    Change("a rendered file now a link", lambda s: swap_for_link(unit(s)),
           "output changed: systemd/demo-worker-quick.service",
           said("is a symbolic link", 1)),
    Change("a rendered folder now a link", link_systemd_folder, "output changed: systemd",
           said("is a symbolic link", 1)),
    Change("deployment.json", lambda s: edit(s.out / "deployment.json", '"demo"', '"demo2"'),
           "output changed: deployment.json", said("holds the rendered site", 1)),
    Change("the manifest", add_to_manifest, "output changed: .crate-deploy-manifest.json",
           said("removed  ")),
    Change("the site's recorded place", lambda s: (s.out / ".crate-deploy-site").write_text(
        "/elsewhere/site.yaml\n"), "output changed: .crate-deploy-site",
        lambda result: result.code == 0),
    Change("the target", lambda s: s.args.extend([s.site, "-o", s.out, "--target",
                                                  "kubernetes"]),
           "input changed: command", said("kubernetes", 2)),
    Change("the site file's name as given", lambda s: s.args.extend(
        [Path(os.path.relpath(s.site)), "-o", s.out]), "input changed: command",
        said("0 file(s) changed")),
    Change("the working directory", lambda s: os.chdir(s.root / "venv-a"),
           "input changed: working directory", said("0 file(s) changed")),
    Change("the environment", lambda s: os.environ.__setitem__("PYDANTIC_DISABLE_PLUGINS",
                                                               "other"),
           "input changed: environment", said("0 file(s) changed")),
    Change("what Python imports from", lambda s: (s.root / "imports/new.py").touch(),
           "input changed: python", said("0 file(s) changed")),
    Change("the record's mode", lambda s: (s.out / RENDER_RECORD_FILE).chmod(0o644),
           "the record is not this user's alone", said("0 file(s) changed")),
    Change("the record's owner", lambda s: os.chown(s.out / RENDER_RECORD_FILE, 65534, -1),
           "the record is not this user's alone", said("0 file(s) changed")),
    Change("the record damaged", lambda s: (s.out / RENDER_RECORD_FILE).write_text("{"),
           "the record is damaged", said("0 file(s) changed")),
    Change("the record a link", lambda s: swap_for_link(s.out / RENDER_RECORD_FILE),
           "cannot read the record", said("0 file(s) changed")),
    Change("the record gone", lambda s: (s.out / RENDER_RECORD_FILE).unlink(),
           "no record of a render there", said("0 file(s) changed")),
]


@pytest.mark.parametrize("change", CHANGES, ids=[change.name for change in CHANGES])
def test_any_change_makes_the_fast_path_step_aside_and_the_render_report_it(
        change: Change, scenario: Scenario) -> None:
    change.make(scenario)
    result = scenario.render()
    assert STEPS_ASIDE + change.reason in result.err, result.err
    assert change.reported(result), (result.code, result.out, result.err)


def test_the_record_is_the_owners_alone_and_holds_no_secret(scenario: Scenario) -> None:
    record = scenario.out / RENDER_RECORD_FILE
    assert stat.S_IMODE(record.stat().st_mode) == 0o600
    text = record.read_text()
    assert "Secret-Value-1234" not in text
    assert json.loads(text)["format"] == FORMAT


def test_a_check_writes_no_record_a_render_does(scenario: Scenario) -> None:
    (scenario.out / RENDER_RECORD_FILE).unlink()
    assert STEPS_ASIDE + "no record of a render there" in scenario.render("--check").err
    assert not (scenario.out / RENDER_RECORD_FILE).exists()
    assert STEPS_ASIDE + "no record of a render there" in scenario.render().err
    assert ANSWERED in scenario.render("--check").err


def test_crate_deploys_own_files_are_an_input(tmp_path: Path) -> None:
    """A template edited in crate-deploy's package: the next render is the full one."""
    package = tmp_path / "checkout"
    shutil.copytree(ROOT / "crate_deploy", package / "crate_deploy",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(ROOT / "templates", package / "templates")
    code = ("import sys; sys.path.insert(0, sys.argv.pop(1)); "
            "from crate_deploy.cli import main; main(sys.argv[1:])")
    command = [sys.executable, "-c", code, str(package), "render",
               str(EXAMPLES / "minimal.yaml"), "-o", str(tmp_path / "out")]
    environment = {**os.environ, "CRATE_DEPLOY_DEBUG": "1"}
    environment.pop("CRATE_DEPLOY_FAST_PATH", None)

    def render() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, env=environment,
                              cwd=package, check=True)  # cwd: on sys.path, never written

    render()
    assert ANSWERED in render().stderr
    template = package / "templates/systemd/target.j2"
    template.write_text(template.read_text() + "# edited\n")
    result = render()
    assert STEPS_ASIDE + "input changed: crate-deploy" in result.stderr
    assert "  changed  " in f"  {result.stdout}"


# --- the command line, as click reads it --------------------------------------------------

ACCEPTED = [
    [], ["site.yaml"], ["s.yaml", "out"], ["s.yaml", "-o", "out"], ["--output=out", "s.yaml"],
    ["--check", "--diff", "--json", "-v", "--force"], ["--host", "h1", "s.yaml"],
    ["--host=h1", "--target", "kubernetes"], ["--verbose", "--target=systemd", "x.yaml"],
]
REFUSED = [
    ["--all-hosts"], ["-h"], ["--help"], ["-vo", "out"], ["-oout"], ["-o=out"], ["--check=1"],
    ["--target", "nomad"], ["a", "b", "c"], ["a", "b", "-o", "c"], ["--host"], ["--host", "-v"],
    ["--check", "--check"], ["-o", "a", "-o", "b"], ["--", "site.yaml"], ["-"], [""],
    ["sité.yaml"], ["--unknown"], ["site.yaml\n"],
]


@pytest.mark.parametrize("argv", ACCEPTED)
def test_the_fast_path_reads_the_command_line_as_click_does(argv: list[str]) -> None:
    from crate_deploy.commands.group import render

    parsed = parse_args(argv)
    assert parsed is not None
    params = render.make_context("render", list(argv)).params
    directory = params["directory"] or params["output_dir"] or Path("crate-deploy-out")
    assert (Path(parsed.site), Path(parsed.directory), parsed.host, parsed.target) == (
        params["site"], directory, params["host"], params["target"])
    assert (parsed.check, parsed.show_diff, parsed.as_json, parsed.verbose) == (
        params["check"], params["show_diff"], params["as_json"], params["verbose"])


@pytest.mark.parametrize("argv", REFUSED)
def test_anything_unusual_on_the_command_line_goes_to_the_full_render(argv: list[str]) -> None:
    assert parse_args(argv) is None


AUDIT = """\
import json, sys
opened = []

def hook(event, args):
    if event == "open" and isinstance(args[0], str):
        opened.append(args[0])
    elif event in ("os.listdir", "os.scandir") and isinstance(args[0], str):
        opened.append(args[0])
    elif event == "subprocess.Popen":
        opened.append(str(args[0]))

sys.addaudithook(hook)
from crate_deploy.cli import main
try:
    main(sys.argv[2:])
except SystemExit:
    pass
with open(sys.argv[1], "w") as stream:
    json.dump(opened, stream)
"""


def test_every_file_a_render_reads_is_in_its_record(scenario: Scenario, tmp_path: Path) -> None:
    """Python's audit hooks see every file a full render opens and every directory it
    lists: each is crate-deploy's or Python's own, in the output directory, or a question
    the record holds (so a new read that bypasses crate_deploy/facts.py fails here)."""
    (scenario.out / RENDER_RECORD_FILE).unlink()
    log = tmp_path / "opened.json"
    environment = {**os.environ, "CRATE_DEPLOY_DEBUG": "1"}
    subprocess.run([sys.executable, "-c", AUDIT, str(log), "render", str(scenario.site),
                    "-o", str(scenario.out)], check=True, cwd=tmp_path, env=environment)
    record = json.loads((scenario.out / RENDER_RECORD_FILE).read_text())
    asked = {argument for _, argument, _ in record["facts"]}
    venvs = {os.path.dirname(os.path.dirname(os.path.realpath(argument)))
             for kind, argument, _ in record["facts"] if kind == "stamp"}
    # The compiled-template cache (render/compiled.py) is no input: Jinja uses a compiled
    # template only while its source is the one it was compiled from.
    cache = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                         "crate-deploy")
    own = [sys.prefix, sys.base_prefix, str(ROOT / "crate_deploy"), str(ROOT / "templates"),
           os.path.realpath(scenario.out), *venvs, "/dev/null", os.path.realpath(cache)]
    # Relative names are opened in the output directory through its descriptor (the fast
    # path and the record); the log is the hook's own; /proc/self/stat says when the
    # process started (a module file changed since leaves no record).
    paths = [path if path.startswith("/") else str(scenario.out / path)
             for path in json.loads(log.read_text()) if path not in (str(log), "/proc/self/stat")]
    unexplained = [path for path in paths
                   if path not in asked and not any(
                       os.path.realpath(path) == top or os.path.realpath(path).startswith(
                           top + "/") for top in own)]
    assert unexplained == [], unexplained


def test_a_render_that_printed_a_python_warning_leaves_no_record(
        scenario: Scenario, monkeypatch: pytest.MonkeyPatch) -> None:
    """The record holds the render's own words; a library's warning is not among them."""
    import warnings

    from crate_deploy.commands import render
    from crate_deploy.site.validate import ValidatedSite, check_target

    def warning_check(validated: ValidatedSite, target: str) -> None:
        warnings.warn("a library's deprecation", UserWarning, stacklevel=1)
        check_target(validated, target)

    monkeypatch.setattr(render, "check_target", warning_check)
    (scenario.out / RENDER_RECORD_FILE).unlink()
    with pytest.warns(UserWarning, match="deprecation"):
        result = scenario.render()
    assert "crate-deploy: debug: no record: a Python warning was printed" in result.err
    assert not (scenario.out / RENDER_RECORD_FILE).exists()


FILESYSTEM_QUESTIONS = re.compile(
    r"\.exists\(|\.resolve\(|\.is_file\(|\.is_dir\(|\.is_symlink\(|os\.path\.realpath|"
    r"\.stat\(|os\.access|os\.path\.exists|os\.path\.isdir|os\.listdir|\.iterdir\(|\.glob\(|"
    r"read_text|read_bytes|open\(")
# Where the render pipeline may ask the filesystem without crate_deploy/facts.py, and why
# the record still covers the answer.
ASKED_ELSEWHERE = {
    "render/jinja.py": "which templates directory: the package's files are an input",
    "render/kubernetes.py": "a probe's command line (text), not a question",
    "render/compiled.py": "compiled templates, used only while the template's source is "
                          "the one they were compiled from: never a different output",
    "site/described.py": "the models' own source, read for `schema` and the reference only, "
                         "never by a render",
    "target/stamp.py": "the venv stamp itself (facts.venv_stamp notes its answer)",
    "target/versions.py": "the probe, run only when deployment.json has no answer for the "
                          "venv's stamp (both in the record)",
    "target/probe.py": "deployment.json, an output file in the record",
}


def test_the_render_pipeline_asks_the_filesystem_through_facts() -> None:
    """The audit-hook test sees opens and listings, not stat-only questions (exists,
    resolve): in site/, plan/, render/ and target/ every such question goes through
    crate_deploy/facts.py, or is listed above with the reason the record covers it."""
    package = ROOT / "crate_deploy"
    found = set()
    for folder in ("site", "plan", "render", "target"):
        for module in (package / folder).glob("*.py"):
            code = "\n".join(line.split("#")[0] for line in module.read_text().splitlines())
            if FILESYSTEM_QUESTIONS.search(re.sub(r"facts\.\w+\(", "(", code)):
                found.add(str(module.relative_to(package)))
    assert found == set(ASKED_ELSEWHERE)
