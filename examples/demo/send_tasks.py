"""Send the demo fleet some work and say which pool ran it.

    .venv/bin/python examples/demo/send_tasks.py [--quick 20] [--slow 2] [--out crate-deploy-out]

Uses the rendered entry module, so the tasks go where the site's routes say.
"""

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", type=int, default=20, help="quick tasks to send")
    parser.add_argument("--slow", type=int, default=2, help="slow (5 s) tasks to send")
    parser.add_argument("--out", default="crate-deploy-out", help="the render directory")
    args = parser.parse_args()
    # Demo only: a real secrets file is root's, and read by systemd, not by scripts.
    for line in (HERE / "secrets.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            os.environ.setdefault(key, value)
    sys.path[:0] = [str(Path(args.out).resolve()), str(HERE)]
    import demoapp
    from crate_deploy_app import app  # noqa: F401 - applies the rendered settings

    started = time.monotonic()
    results = [demoapp.quick.delay(n) for n in range(args.quick)]
    results += [demoapp.slow.delay(5, n) for n in range(args.slow)]
    ran_by: dict[str, int] = {}
    for result in results:
        node = result.get(timeout=120)["node"]
        ran_by[node] = ran_by.get(node, 0) + 1
    print(f"{len(results)} tasks done in {time.monotonic() - started:.1f}s:")
    for node, count in sorted(ran_by.items()):
        print(f"  {count:>4} by {node}")


if __name__ == "__main__":
    main()
