"""How a worker runs: the settings the CLI (or a test) hands to the engine."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class WorkerConfig:
    """How a worker runs; the CLI fills it from flags and settings."""

    queues: list[str] = field(default_factory=lambda: ["default"])
    concurrency: int = 10
    batch_size: int = 500
    poll_interval: float = 1.0
    stale_after: float = 30.0
    reap_interval: float = 5.0
    shutdown_timeout: float = 30.0
    timeout_grace: float = 10.0
    listen: bool = True
    burst: bool = False
    flush_interval: float = 0.002
    flush_size: int = 500
    progress_interval: float = 1.0
    claim_ahead: bool = True
    log_jobs: bool = False
    health_host: str = "127.0.0.1"
    health_port: int | None = None
    # The largest result a handler may return, in bytes of JSON: the same limit as a payload's
    # (SCHED_MAX_PAYLOAD_BYTES), so whatever a job stores, a client can read back.
    max_payload_bytes: int = 1024 * 1024
    # synchronous_commit of the claim and outcome connections (SCHED_WORKER_COMMIT; README, Deploying).
    commit: str = "off"
    # A second URL used only for LISTEN (SCHED_LISTEN_URL): a direct or session-mode connection for a worker
    # whose database URL goes through a transaction pooler (README, "Behind a connection pooler").
    listen_dsn: str | None = None

    @property
    def heartbeat_interval(self) -> float:
        # Several beats fit in one stale-after window, so one slow beat never makes a worker look dead.
        return max(0.2, min(5.0, self.stale_after / 4))
