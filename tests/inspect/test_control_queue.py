"""Which brokers let readiness look at a pool's control queue (the AMQP ones do; see
tests/integration/test_readiness.py for a real worker's)."""

from __future__ import annotations

from crate_deploy.inspect import probe


def test_a_broker_without_control_queues_cannot_tell() -> None:
    """Redis delivers control messages by pub/sub: no queue to look at, so every pool is
    pinged (None, not False). Nothing connects: the transport alone tells."""
    app = probe.control_app(["redis://127.0.0.1:6379/15"], timeout=3.0)
    try:
        assert probe.listening_for_control(app, ["any@host"]) == {"any@host": None}
    finally:
        app.close()
