#!/usr/bin/env python3
"""How fast are `crate-deploy render` and `validate`, against the cost of their imports?

Run it with the interpreter of the venv crate-deploy is installed in:

    .venv/bin/python benchmarks/render_bench.py                 # 25 rounds, Markdown table
    .venv/bin/python benchmarks/render_bench.py --reps 30 --json /tmp/bench.json
    .venv/bin/python benchmarks/render_bench.py --profile       # + where the time goes

Every case runs once per round, in a shuffled order (seeded), after --warmup untimed
rounds, so drift (a busy neighbour, CPU frequency) hits every case alike. Each run's
wall time and CPU time (user + system) are kept; the table gives wall median, min and
p90, and the CPU median. On a shared machine, `nice -n -15` and the minimums help.
Cases:

- floor          `python -c "import yaml, jinja2, pydantic"`: the import floor, same
                 interpreter (`python`: interpreter start alone; `floor+model`: with
                 pydantic.main, which `import pydantic` alone does not load)
- imports        `import crate_deploy.cli, crate_deploy.commands.render`: a render's imports
- render-first   `crate-deploy render examples/site.yaml -o EMPTY_DIR`
- render-repeat  the same into a directory where every file is already unchanged (the
                 unchanged-render fast path answers: commands/unchanged.py)
- render-repeat-full  the same with CRATE_DEPLOY_FAST_PATH=0: the full render finding
                 every file unchanged
- validate       `crate-deploy validate examples/site.yaml`
- big-*          a generated site (1000 worker pools, 1000 queues, 1000 routes) rendered
                 as a process (into an empty and into an unchanged directory) and in
                 this process: validate_file + choose_versions + render_site +
                 plan_changes against an empty directory (and, for -write, written
                 with apply_changes), with a fresh Jinja environment each round
                 (templates compiled every time, as a process would), imports excluded

crate-deploy's bytecode is written first (--no-compile: not), as an installed package has
it; output directories are kept until the end (removing them between rounds slows the
next round's file creation on ext4 without a journal: see fresh_render).

Targets (issue 12): an unchanged render within 1.1x the import floor, a first render
within 2.0x; the 1000-pool site's first render into an empty directory under 1 s.
--profile adds `python -X importtime` of a render (cumulative import time by module),
the model build time, a step-by-step timing of a render in one process, and a cProfile
of the in-process 1000-pool render. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import cProfile
import datetime
import io
import json
import os
import platform
import pstats
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "site.yaml"
FLOOR_CODE = "import yaml, jinja2, pydantic"
BASEMODEL_CODE = "import yaml, jinja2; from pydantic import BaseModel"
IMPORTS_CODE = "import crate_deploy.cli, crate_deploy.commands.render"
REPEAT_RATIO_TARGET = 1.1
FIRST_RATIO_TARGET = 2.0
FULL_PATH = {"CRATE_DEPLOY_FAST_PATH": "0"}
BIG_TARGET_SEC = 1.0
BIG_POOLS = 1000


Timing = tuple[float, float]  # (wall seconds, CPU seconds: user + system)


@dataclass
class Case:
    name: str
    description: str
    run: Callable[[], Timing]  # one timed run (setup excluded)
    samples: list[float] = field(default_factory=list)  # wall seconds
    cpu_samples: list[float] = field(default_factory=list)  # CPU seconds of the same runs


# --- helpers ----------------------------------------------------------------------


def crate_deploy_program() -> str:
    """The crate-deploy console script of this interpreter's venv (else the one on PATH)."""
    beside = Path(sys.executable).parent / "crate-deploy"
    if beside.exists():
        return str(beside)
    found = shutil.which("crate-deploy")
    if found is None:
        sys.exit("crate-deploy is not installed: run `.venv/bin/pip install -e .` first")
    return found


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def timed_process(argv: list[str], expect: int = 0,
                  env: dict[str, str] | None = None) -> Timing:
    """Wall time of one run of argv, and the CPU time it (and its children) used."""
    environment = {**os.environ, **(env or {})}
    environment.pop("CRATE_DEPLOY_DEBUG", None)
    cpu = _children_cpu()
    start = time.perf_counter()
    result = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            check=False, env=environment)
    elapsed = time.perf_counter() - start
    if result.returncode != expect:
        sys.exit(f"{' '.join(argv)} exited {result.returncode}:\n{result.stderr.decode()}")
    return elapsed, _children_cpu() - cpu


def generate_big_site(path: Path, pools: int = BIG_POOLS) -> None:
    """examples/site.yaml with `pools` worker pools, each on its own queue and route."""
    import yaml

    site = yaml.safe_load(EXAMPLE.read_text(encoding="utf-8"))
    site["queues"] = [{"name": f"q{i:04d}"} for i in range(pools)]
    site["workers"] = [{"name": f"pool{i:04d}", "queues": [f"q{i:04d}"], "concurrency": 2,
                        "soft_time_limit": 540, "time_limit": 600} for i in range(pools)]
    site["default_queue"] = "q0000"
    site["routes"] = {f"crate_anon.tasks.task{i:04d}": f"q{i:04d}" for i in range(pools)}
    for entry in site["beat"]["schedule"]:
        entry["queue"] = "q0000"
    # The example's Kubernetes settings name its own pools, which this site no longer has.
    site.get("kubernetes", {}).pop("pools", None)
    path.write_text(yaml.safe_dump(site, sort_keys=False), encoding="utf-8")


def compile_bytecode() -> None:
    """Write crate-deploy's own bytecode (__pycache__) before timing, as pip does for every
    library it installs (the floor's yaml, jinja2 and pydantic load theirs). An editable
    install under PYTHONDONTWRITEBYTECODE=1 (set in this project's sessions) never writes
    it, and then every run compiled crate-deploy's ~60 modules from source: 40-50 ms of a
    render that no installed crate-deploy pays."""
    import compileall

    import crate_deploy

    compileall.compile_dir(Path(crate_deploy.__file__).parent, quiet=1)


def percentile(samples: list[float], fraction: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(samples)
    if len(ordered) == 1:
        return ordered[0]
    position = fraction * (len(ordered) - 1)
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summary(samples: list[float]) -> dict[str, float]:
    return {"median": statistics.median(samples), "min": min(samples),
            "p90": percentile(samples, 0.9), "max": max(samples),
            "stdev": statistics.stdev(samples) if len(samples) > 1 else 0.0}


def machine() -> dict[str, Any]:
    import crate_deploy

    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.partition(":")[2].strip()
                break
    except OSError:
        pass
    versions: dict[str, str | None] = {}
    for dist in ("crate-deploy", "pydantic", "pydantic-core", "jinja2", "pyyaml", "click"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True, check=False).stdout.strip()
    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "python": platform.python_version(), "executable": sys.executable,
            "versions": versions, "git_commit": commit or None,
            "crate_deploy_from": str(Path(crate_deploy.__file__).parent),
            "loadavg": [round(value, 2) for value in os.getloadavg()]}


# --- the cases --------------------------------------------------------------------


def build_cases(work: Path, program: str) -> list[Case]:
    from crate_deploy.render import jinja as render_jinja
    from crate_deploy.render import render_site
    from crate_deploy.site.validate import validate_file
    from crate_deploy.target.probe import choose_versions
    from crate_deploy.write import apply_changes, plan_changes

    big = work / "site1000.yaml"
    generate_big_site(big)
    repeat_dir = work / "repeat"
    big_repeat_dir = work / "repeat1000"
    for site, directory in ((EXAMPLE, repeat_dir), (big, big_repeat_dir)):
        subprocess.run([program, "render", str(site), "-o", str(directory)],
                       capture_output=True, check=True)

    # Output directories are kept until the end, not removed after each run: on ext4
    # without a journal (this VM's root), a new file skips every inode freed recently
    # (recently_deleted() in fs/ext4/ialloc.c), so removing 1,008 files before
    # each round made the next round's 1,008 creates cost 0.3-0.6 s of kernel time: a
    # cost of the benchmark, not of a render into an empty directory.
    def fresh_render(site: Path) -> Callable[[], Timing]:
        def run() -> Timing:
            directory = Path(tempfile.mkdtemp(prefix="out-", dir=work))
            return timed_process([program, "render", str(site), "-o", str(directory)])
        return run

    def in_process(site: Path) -> Callable[[], Timing]:
        empty = work / "never-written"

        def run() -> Timing:
            render_jinja.environment.cache_clear()  # compile templates, as a process does
            cpu, start = time.process_time(), time.perf_counter()
            validated = validate_file(site)
            config_dir = validated.site.paths.config_dir or str(empty)
            versions, _ = choose_versions(validated.site, empty)
            rendering = render_site(validated.site, str(site), config_dir, versions)
            changes = plan_changes(empty, rendering.files)
            timing = time.perf_counter() - start, time.process_time() - cpu
            assert len(changes) == len(rendering.files) > BIG_POOLS
            return timing
        return run

    def in_process_write(site: Path) -> Callable[[], Timing]:
        def run() -> Timing:
            directory = Path(tempfile.mkdtemp(prefix="out-", dir=work))  # kept: see above
            render_jinja.environment.cache_clear()
            cpu, start = time.process_time(), time.perf_counter()
            validated = validate_file(site)
            versions, _ = choose_versions(validated.site, directory)
            rendering = render_site(validated.site, str(site), str(directory), versions)
            apply_changes(directory, plan_changes(directory, rendering.files))
            return time.perf_counter() - start, time.process_time() - cpu
        return run

    python = sys.executable
    return [
        Case("floor", f'`python -c "{FLOOR_CODE}"`',
             lambda: timed_process([python, "-c", FLOOR_CODE])),
        Case("python", '`python -c "pass"` (interpreter start, for reference)',
             lambda: timed_process([python, "-c", "pass"])),
        Case("floor+model", f'`python -c "{BASEMODEL_CODE}"` (pydantic.main loaded too)',
             lambda: timed_process([python, "-c", BASEMODEL_CODE])),
        Case("imports", f'`python -c "{IMPORTS_CODE}"`: what render imports, no work',
             lambda: timed_process([python, "-c", IMPORTS_CODE])),
        Case("render-first", "`render examples/site.yaml` into an empty directory",
             fresh_render(EXAMPLE)),
        Case("render-repeat", "`render examples/site.yaml`, every file unchanged (fast path)",
             lambda: timed_process([program, "render", str(EXAMPLE), "-o", str(repeat_dir)])),
        Case("render-repeat-full", "the same, CRATE_DEPLOY_FAST_PATH=0 (the full render)",
             lambda: timed_process([program, "render", str(EXAMPLE), "-o", str(repeat_dir)],
                                   env=FULL_PATH)),
        Case("validate", "`validate examples/site.yaml`",
             lambda: timed_process([program, "validate", str(EXAMPLE)])),
        Case("big-first", f"`render` {BIG_POOLS}-pool site into an empty directory",
             fresh_render(big)),
        Case("big-repeat", f"`render` {BIG_POOLS}-pool site, every file unchanged (fast path)",
             lambda: timed_process([program, "render", str(big), "-o", str(big_repeat_dir)])),
        Case("big-repeat-full", f"`render` {BIG_POOLS}-pool site, unchanged, "
             "CRATE_DEPLOY_FAST_PATH=0",
             lambda: timed_process([program, "render", str(big), "-o", str(big_repeat_dir)],
                                   env=FULL_PATH)),
        Case("big-inprocess", f"{BIG_POOLS}-pool site in-process: validate + render + plan",
             in_process(big)),
        Case("big-inprocess-write", f"{BIG_POOLS}-pool site in-process, and written "
             "(apply_changes, one syncfs) into an empty directory",
             in_process_write(big)),
    ]


def run_rounds(cases: list[Case], reps: int, warmup: int, seed: int) -> None:
    rng = random.Random(seed)
    for round_number in range(warmup + reps):
        order = list(cases)
        rng.shuffle(order)
        for case in order:
            elapsed, cpu = case.run()
            if round_number >= warmup:
                case.samples.append(elapsed)
                case.cpu_samples.append(cpu)
        print(f"\rround {round_number + 1}/{warmup + reps}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)


# --- reporting --------------------------------------------------------------------


def report(cases: list[Case], info: dict[str, Any]) -> dict[str, Any]:
    stats = {case.name: summary(case.samples) for case in cases}
    cpu = {case.name: summary(case.cpu_samples) for case in cases}
    floor, floor_cpu = stats["floor"], cpu["floor"]
    ratios = {name: {"median": stats[name]["median"] / floor["median"],
                     "min": stats[name]["min"] / floor["min"],
                     "cpu_median": cpu[name]["median"] / floor_cpu["median"]}
              for name in ("render-first", "render-repeat", "render-repeat-full", "validate")}
    big_process = stats["big-repeat"]["median"]
    big_first = stats["big-first"]["median"]
    big_inproc = stats["big-inprocess"]["median"]
    targets = {
        "repeat_within_1.1x_floor": ratios["render-repeat"]["median"] <= REPEAT_RATIO_TARGET,
        "first_within_2.0x_floor": ratios["render-first"]["median"] <= FIRST_RATIO_TARGET,
        "big_site_under_1s_process_first": big_first < BIG_TARGET_SEC,
        "big_site_under_1s_process_repeat": big_process < BIG_TARGET_SEC,
        "big_site_under_1s_in_process": big_inproc < BIG_TARGET_SEC,
    }
    return {"machine": info, "reps": len(cases[0].samples), "stats": stats, "cpu": cpu,
            "ratios_to_floor": ratios, "targets": targets,
            "descriptions": {case.name: case.description for case in cases}}


def markdown(result: dict[str, Any]) -> str:
    info, stats, cpu = result["machine"], result["stats"], result["cpu"]
    floor, floor_cpu = stats["floor"]["median"], cpu["floor"]["median"]
    versions = ", ".join(f"{k} {v}" for k, v in info["versions"].items() if v)
    lines = [
        f"{info['date']} · {info['nproc']} CPU(s), {info['cpu']} · Linux {info['kernel']} · "
        f"Python {info['python']} · {versions} · commit {info['git_commit']} · "
        f"{result['reps']} interleaved rounds · crate-deploy's bytecode "
        f"{info.get('bytecode', 'as found')} · load average before/after "
        f"{info['loadavg_before'][0]:.2f}/{info['loadavg'][0]:.2f}",
        "",
        "| case | what | median ms | min ms | p90 ms | median / floor | CPU median ms "
        "| CPU / floor |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, values in stats.items():
        process = not name.startswith("big-inprocess")
        ratio = f"{values['median'] / floor:.2f}x" if process else ""
        cpu_ratio = f"{cpu[name]['median'] / floor_cpu:.2f}x" if process else ""
        lines.append(f"| {name} | {result['descriptions'][name]} | {values['median'] * 1e3:.0f} "
                     f"| {values['min'] * 1e3:.0f} | {values['p90'] * 1e3:.0f} | {ratio} "
                     f"| {cpu[name]['median'] * 1e3:.0f} | {cpu_ratio} |")
    ratios, targets = result["ratios_to_floor"], result["targets"]
    lines += [
        "",
        f"- unchanged render / floor: {ratios['render-repeat']['median']:.2f}x (min/min "
        f"{ratios['render-repeat']['min']:.2f}x, CPU {ratios['render-repeat']['cpu_median']:.2f}x;"
        f" the full render: {ratios['render-repeat-full']['median']:.2f}x); target <= "
        f"{REPEAT_RATIO_TARGET}x: {_verdict(targets['repeat_within_1.1x_floor'])}",
        f"- first render / floor: {ratios['render-first']['median']:.2f}x (min/min "
        f"{ratios['render-first']['min']:.2f}x, CPU {ratios['render-first']['cpu_median']:.2f}x);"
        f" target <= {FIRST_RATIO_TARGET}x: {_verdict(targets['first_within_2.0x_floor'])}",
        f"- {BIG_POOLS}-pool site under {BIG_TARGET_SEC:g} s: process, empty dir "
        f"{_verdict(targets['big_site_under_1s_process_first'])}; process, unchanged "
        f"{_verdict(targets['big_site_under_1s_process_repeat'])}; in-process "
        f"{_verdict(targets['big_site_under_1s_in_process'])}",
    ]
    return "\n".join(lines) + "\n"


def _verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


# --- profiling (--profile) --------------------------------------------------------


def import_profile(program: str, work: Path, top: int = 25) -> str:
    """`python -X importtime` of one render: the slowest imports, cumulative, in ms."""
    directory = work / "importtime"
    code = ("import sys; from crate_deploy.cli import main; "
            f"sys.argv=['crate-deploy','render',{str(EXAMPLE)!r},'-o',{str(directory)!r}]; main()")
    result = subprocess.run([sys.executable, "-X", "importtime", "-c", code],
                            capture_output=True, text=True, check=False)
    rows: list[tuple[int, int, int, str]] = []
    for line in result.stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line or "cumulative" in line:
            continue
        _, self_text, cumulative_text, name = (part.strip() for part in
                                               line.replace("import time:", "|").split("|"))
        depth = (len(line.split("|")[2]) - len(line.split("|")[2].lstrip()) - 1) // 2
        rows.append((int(cumulative_text), int(self_text), depth, name))
    total = sum(cumulative for cumulative, _, depth, _ in rows if depth == 0)
    lines = [f"Imports of one `render` (python -X importtime; total of top-level imports "
             f"{total / 1e3:.0f} ms, inflated by the measurement itself):", "",
             "| module | cumulative ms | self ms |", "| --- | ---: | ---: |"]
    for cumulative, self_us, depth, name in sorted(rows, reverse=True)[:top]:
        lines.append(f"| {'  ' * depth}{name} | {cumulative / 1e3:.1f} | {self_us / 1e3:.1f} |")
    return "\n".join(lines) + "\n"


def call_profile(work: Path, top: int = 20) -> str:
    """cProfile of the in-process 1000-pool render (validate + render + plan)."""
    from crate_deploy.render import jinja as render_jinja
    from crate_deploy.render import render_site
    from crate_deploy.site.validate import validate_file
    from crate_deploy.target.probe import choose_versions
    from crate_deploy.write import plan_changes

    big, empty = work / "site1000.yaml", work / "never-written"
    render_jinja.environment.cache_clear()
    profiler = cProfile.Profile()
    profiler.enable()
    validated = validate_file(big)
    versions, _ = choose_versions(validated.site, empty)
    rendering = render_site(validated.site, str(big), str(empty), versions)
    plan_changes(empty, rendering.files)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("cumulative").print_stats(top)
    return (f"cProfile, {BIG_POOLS}-pool site in-process (sorted by cumulative time):\n\n"
            "```\n" + out.getvalue().strip() + "\n```\n")


MODEL_BUILD_CODE = """
import time
import yaml, jinja2, click
from pydantic import BaseModel
import crate_deploy.errors, crate_deploy.site.load
start = time.perf_counter()
import crate_deploy.site.model
print(time.perf_counter() - start)
"""


def phase_profile(work: Path, repeats: int = 7) -> str:
    """Median time of each step of a render, in this process, for both sites."""
    from crate_deploy.render import jinja as render_jinja
    from crate_deploy.render import render_site
    from crate_deploy.site.load import load_site
    from crate_deploy.site.validate import validate_file
    from crate_deploy.target.probe import choose_versions
    from crate_deploy.write import apply_changes, plan_changes

    builds = [float(subprocess.run([sys.executable, "-c", MODEL_BUILD_CODE], capture_output=True,
                                   text=True, check=True).stdout) for _ in range(repeats)]
    lines = [f"Model build: importing crate_deploy.site.model once its imports are loaded (class "
             f"creation, pydantic core-schema and validator build) takes "
             f"{statistics.median(builds) * 1e3:.0f} ms (median of {repeats} processes).", "",
             "Steps of a render in one process (median of "
             f"{repeats}, ms; the Jinja environment is fresh each time):", "",
             "| site | load_site (YAML) | validate_file (all) | render_site | plan, empty dir "
             "| write + fsync | plan, unchanged |", "| --- | ---: | ---: | ---: | ---: | ---: "
             "| ---: |"]
    for label, site in (("examples/site.yaml", EXAMPLE), (f"{BIG_POOLS} pools",
                                                          work / "site1000.yaml")):
        steps: dict[str, list[float]] = {}
        for _ in range(repeats):
            directory = Path(tempfile.mkdtemp(prefix="phase-", dir=work))
            render_jinja.environment.cache_clear()
            marks = [time.perf_counter()]
            load_site(site)
            marks.append(time.perf_counter())
            validated = validate_file(site)
            marks.append(time.perf_counter())
            versions, _ = choose_versions(validated.site, directory)
            rendering = render_site(validated.site, str(site), str(directory), versions)
            marks.append(time.perf_counter())
            changes = plan_changes(directory, rendering.files)
            marks.append(time.perf_counter())
            apply_changes(directory, changes)
            marks.append(time.perf_counter())
            plan_changes(directory, rendering.files)
            marks.append(time.perf_counter())  # directory kept: see fresh_render
            for index, name in enumerate(("load", "validate", "render", "plan", "write",
                                          "replan")):
                steps.setdefault(name, []).append(marks[index + 1] - marks[index])
        cells = " | ".join(f"{statistics.median(values) * 1e3:.0f}" for values in steps.values())
        lines.append(f"| {label} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=25, help="timed rounds (default 25)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the round order")
    parser.add_argument("--json", type=Path, help="also write the figures as JSON here")
    parser.add_argument("--no-compile", action="store_true",
                        help="do not write crate-deploy's bytecode first (measure what is "
                             "there: from source under PYTHONDONTWRITEBYTECODE)")
    parser.add_argument("--profile", action="store_true",
                        help="also profile: -X importtime of a render, cProfile of the "
                             "1000-pool render")
    args = parser.parse_args()
    if args.reps < 2:
        parser.error("--reps must be at least 2")
    program = crate_deploy_program()
    if not args.no_compile:
        compile_bytecode()
    with tempfile.TemporaryDirectory(prefix="render-bench-") as name:
        work = Path(name)
        cases = build_cases(work, program)
        load_before = [round(value, 2) for value in os.getloadavg()]
        run_rounds(cases, args.reps, args.warmup, args.seed)
        result = report(cases, machine())
        result["machine"]["loadavg_before"] = load_before
        result["machine"]["bytecode"] = "as found" if args.no_compile else "compiled first"
        print(markdown(result))
        if args.profile:
            result["profile"] = {"imports": import_profile(program, work),
                                 "phases": phase_profile(work),
                                 "calls": call_profile(work)}
            for text in result["profile"].values():
                print(text)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
