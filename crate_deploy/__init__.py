"""crate-deploy: declarative deployment of Celery task fleets."""

__version__ = "0.1.0"
