"""The target: which Celery, kombu and Flower the fleet runs, and what they accept."""
