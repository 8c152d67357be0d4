"""`cds-tpi serve`: run the CDS Hooks service on uvicorn (one engine per worker process)."""

from __future__ import annotations

import errno
import os
import socket

import click

from cds_tpi.errors import InputError
from cds_tpi.service.config import ServiceConfig, is_loopback, load_config

CONFIG_ENV = "CDS_TPI_SERVICE_CONFIG"


def build_config(config_file: str | None, **overrides: object) -> ServiceConfig:
    """The config from file + options, refused (UsageError) when it would expose an open service."""
    try:
        config = load_config(config_file, **overrides)
    except InputError as e:
        raise click.BadParameter(str(e), param_hint="--config") from e
    if not config.auth_enabled and not is_loopback(config.host) and not config.allow_unauthenticated:
        raise click.UsageError(
            f"refusing to bind {config.host} without JWT issuers: anyone on the network could call the "
            "service. Configure 'issuers' in --config, bind 127.0.0.1, or pass --allow-unauthenticated."
        )
    return config


def require_service_extra() -> None:
    """A one-line usage error when the service's libraries (the `service` extra) are not installed."""
    import importlib.util  # noqa: PLC0415

    modules = ("uvicorn", "starlette", "sqlalchemy", "httpx", "joserfc", "prometheus_client")
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise click.UsageError(f"the CDS Hooks service needs the 'service' extra ({', '.join(missing)} not installed): "
                               "pip install 'cds-tpi[service]' (and 'cds-tpi[postgres]' for PostgreSQL)")


# Every option can come from the environment too (containers): CDS_TPI_HOST, CDS_TPI_PORT,
# CDS_TPI_WORKERS, CDS_TPI_CONFIG, CDS_TPI_DATABASE_URL, CDS_TPI_LOG_LEVEL. An option on the
# command line wins over its variable, both win over the config file.
@click.command("serve")
@click.option("--host", default=None, envvar="CDS_TPI_HOST", show_envvar=True, help="Address to bind (default 127.0.0.1).")
@click.option("--port", type=click.IntRange(0, 65535), default=None, envvar="CDS_TPI_PORT", show_envvar=True,
              help="Port (default 8080).")
@click.option("--workers", type=click.IntRange(1, 64), default=None, envvar="CDS_TPI_WORKERS", show_envvar=True,
              help="Worker processes (one engine each).")
@click.option("--config", "config_file", type=click.Path(exists=True, dir_okay=False), default=None,
              envvar="CDS_TPI_CONFIG", show_envvar=True,
              help="YAML or TOML file: issuers, database_url, max_body_bytes, FHIR timeouts, allowed_origins ...")
@click.option("--database-url", default=None, envvar="CDS_TPI_DATABASE_URL", show_envvar=True,
              help="SQLAlchemy URL (default: SQLite in the per-user data directory, see `cds-tpi stats --help`; "
                   "postgresql://user@host/db for PostgreSQL).")
@click.option("--allow-unauthenticated", is_flag=True, default=None,
              help="Allow a non-loopback --host without JWT issuers (not for production).")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info", show_default=True,
              envvar="CDS_TPI_LOG_LEVEL", show_envvar=True)
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              envvar="CDS_TPI_LOG_FORMAT", show_envvar=True,
              help="json: one JSON object per log line (time, level, logger, message and the call's fields).")
def serve(host, port, workers, config_file, database_url, allow_unauthenticated, log_level, log_format) -> None:
    """Serve the CDS Hooks 2.0 endpoints (discovery, 4 services, feedback) over HTTP."""
    require_service_extra()
    import uvicorn  # noqa: PLC0415 - only this command needs it

    from cds_tpi.service.config import sqlite_file  # noqa: PLC0415
    from cds_tpi.service.storage import Storage, redact_url  # noqa: PLC0415

    config = build_config(config_file, host=host, port=port, workers=workers, database_url=database_url,
                          allow_unauthenticated=allow_unauthenticated)
    db_file = sqlite_file(config.database_url)
    if db_file is not None:
        try:  # the per-user data directory may not exist yet on a first start
            db_file.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise click.ClickException(f"cannot create the database directory {db_file.parent}: {e.strerror or e}") from e
    # Bind first, here: uvicorn would run the app's start-up (and log "service ready") before it
    # found the port taken. The bound socket is handed to uvicorn: with several workers on Linux each
    # binds one of its own beside it (WorkerListener), else they share it.
    per_worker = config.workers > 1 and hasattr(socket, "SO_REUSEPORT")
    sock = bind_socket(config.host, config.port, reuse_port=per_worker)
    # Create the schema once here, so that several workers do not race to create it, and refuse to
    # start on a database that cannot be written (read-only file, server down, no permission): the
    # audit trail and clinician feedback would be lost from the first call on. A database that
    # fails later, mid-run, does not stop the service: cards are still answered, feedback gets 503
    # (the EHR retries), audit rows that cannot be written are counted in /health and logged.
    storage = Storage(config.database_url)
    try:
        storage.create_schema()
        storage.check_writable()
    except Exception as e:
        raise click.ClickException(
            f"database not usable: {redact_url(config.database_url)} cannot be written "
            f"({type(e).__name__}: {_first_line(e)}). The audit trail and feedback need a writable database: "
            "fix its permissions or availability, or choose another with --database-url.") from e
    finally:
        storage.dispose()
    os.environ[CONFIG_ENV] = config.to_json().decode()
    metrics_dir = None
    if config.metrics_enabled and config.workers > 1:  # each worker counts; /metrics sums their files
        from cds_tpi.service.metrics import prepare_multiprocess_dir  # noqa: PLC0415

        metrics_dir = prepare_multiprocess_dir()
    uv_config = uvicorn.Config("cds_tpi.service.app:app_from_environment", factory=True, host=config.host,
                               port=config.port, workers=config.workers, log_level=log_level,
                               log_config=log_config(log_level, log_format), server_header=False, proxy_headers=False,
                               timeout_graceful_shutdown=10, limit_concurrency=config.limit_concurrency,
                               timeout_keep_alive=config.timeout_keep_alive,
                               http="cds_tpi.service.protocol:HeaderTimeoutProtocol")  # header deadline
    server = uvicorn.Server(uv_config)
    try:
        if config.workers > 1:
            from uvicorn.supervisors import Multiprocess  # noqa: PLC0415

            listeners = [WorkerListener(sock)] if per_worker else [sock]
            Multiprocess(uv_config, sockets=listeners).run()
        else:
            server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        sock.close()
        if metrics_dir:
            from cds_tpi.service.metrics import remove_multiprocess_dir  # noqa: PLC0415

            remove_multiprocess_dir(metrics_dir)
    if config.workers == 1 and not server.started:
        raise click.ClickException("the service did not start (see the log above)")


class PortUnavailable(click.ClickException):
    """The address cannot be bound (in use, not local, no permission): exit status 1, one line."""


def bind_socket(host: str, port: int, reuse_port: bool = False) -> socket.socket:
    """A listening-ready socket bound to host:port (SO_REUSEADDR, as uvicorn does), or PortUnavailable.
    reuse_port: with SO_REUSEPORT, so that each worker can bind a listening socket of its own to the same
    address (WorkerListener)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if reuse_port:
        # First without SO_REUSEPORT: bound by itself, the port is refused when any socket holds it, also
        # the SO_REUSEPORT sockets of another `cds-tpi serve` of this user, which a SO_REUSEPORT bind would
        # silently join (two services answering on one port). Then the port is this service's; a service
        # started in the instant between the two binds is the one case not caught.
        with _bind(family, host, port, reuse_port=False) as probe:
            port = probe.getsockname()[1]
    sock = _bind(family, host, port, reuse_port)
    sock.set_inheritable(True)
    return sock


def _bind(family: int, host: str, port: int, reuse_port: bool) -> socket.socket:
    """A socket bound to host:port (SO_REUSEADDR; SO_REUSEPORT too when asked), or PortUnavailable."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        why = "the port is already in use" if e.errno == errno.EADDRINUSE else (e.strerror or str(e))
        raise PortUnavailable(f"cannot listen on {host}:{port}: {why} (choose another with --port)") from None
    return sock


class WorkerListener:
    """Stands, in uvicorn's worker supervisor, for the listening socket of one worker: each worker process
    (uvicorn's Multiprocess starts them with multiprocessing's spawn, which pickles their arguments) binds
    a socket of its own to the serving address with SO_REUSEPORT, and the kernel spreads new connections
    over the workers' sockets (by a hash of the connection's addresses).

    Why: with one listening socket shared by every worker, a burst of connections - 16 keep-alive
    clients opening at once, a load balancer's pool after a restart - is often accepted entirely by one
    worker (asyncio accepts every pending connection at each wake-up) while the other idles: in the
    2026-12-04 runs of benchmarks/load.py one worker used ~1 s of CPU in 3 of 8 runs, and its queue
    set the p99. The parent process keeps its own SO_REUSEPORT socket bound (never listening: the
    kernel gives connections only to listening sockets) so that the port stays this service's while
    workers are replaced, and a busy port is reported before any worker starts. A replacement worker
    binds afresh, so no listening socket is ever left without a worker to accept from it.

    The cost: connections the kernel has queued on a worker's socket but the worker has not accepted are
    reset when that worker dies (with one shared socket the survivor took them), unless the host sets
    net.ipv4.tcp_migrate_req=1 (Linux 5.14+). Killing a worker under 8 busy clients failed 5-13 requests
    where it failed at most 8 (tests/service/test_workers.py). Linux's SO_REUSEPORT lets only processes
    of the same user join the group (socket(7)). Without SO_REUSEPORT (not Linux/BSD) the workers share
    one socket as before."""

    def __init__(self, bound: socket.socket):
        self.family = bound.family
        self.address = bound.getsockname()[:2]  # the port the parent bound (an ephemeral --port 0 too)

    def __reduce__(self):
        # unpickled in the worker: a socket of its own, bound with SO_REUSEPORT to the parent's address
        # (uvicorn makes it listen)
        return _bind, (self.family, *self.address, True)


def _first_line(e: Exception) -> str:
    """The driver's message without SQLAlchemy's multi-line SQL / background-link appendix."""
    orig = getattr(e, "orig", None)
    return (str(orig if orig is not None else e).strip().splitlines() or [""])[0][:300]


def log_config(level: str, fmt: str = "text") -> dict:
    """uvicorn's logging config plus our loggers (applied in every worker process too). httpx and
    httpcore stay at WARNING: at INFO they log request URLs, which carry patient ids. fmt "json":
    every line (uvicorn's too) is a JSON object (cds_tpi.service.logs.JsonFormatter)."""
    import copy

    from uvicorn.config import LOGGING_CONFIG  # noqa: PLC0415

    config = copy.deepcopy(LOGGING_CONFIG)
    config["formatters"]["cds_tpi"] = {"()": "uvicorn.logging.DefaultFormatter",
                                       "fmt": "%(levelprefix)s %(name)s: %(message)s", "use_colors": False}
    config["handlers"]["cds_tpi"] = {"formatter": "cds_tpi", "class": "logging.StreamHandler", "stream": "ext://sys.stderr"}
    config["loggers"]["cds_tpi"] = {"handlers": ["cds_tpi"], "level": level.upper(), "propagate": False}
    for name in ("httpx", "httpcore"):
        config["loggers"][name] = {"handlers": ["cds_tpi"], "level": "WARNING", "propagate": False}
    if fmt == "json":
        for name in config["formatters"]:
            config["formatters"][name] = {"()": "cds_tpi.service.logs.JsonFormatter"}
    return config


if __name__ == "__main__":
    serve()
