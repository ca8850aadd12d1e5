"""crate-deploy: declarative deployment of Celery task fleets."""

import os

__version__ = "0.1.0"


def template_dirs() -> tuple[str, str]:
    """Where the templates may be, in order: templates/ inside the installed package, or at
    the top of a source checkout (the render and the fast path's fingerprint both ask)."""
    package = os.path.dirname(os.path.realpath(__file__))  # noqa: PTH120 - no pathlib here
    return (os.path.join(package, "templates"),  # noqa: PTH118
            os.path.join(os.path.dirname(package), "templates"))  # noqa: PTH118, PTH120
