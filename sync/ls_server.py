"""Start and stop a real Label Studio server on 127.0.0.1.

Used by the test fixture, ``habla-ls labelstudio up``/``down`` and the demo. A fresh data dir costs ~25 s
of migrations, so a migrated *template* is built once per machine (cached) and copied (~3 s start).

On PostgreSQL (``database_url``) the same holds one level down: Label Studio's migrations run once into a
template *database* inside a cached PostgreSQL cluster, and each throw-away server gets ``CREATE DATABASE
... TEMPLATE`` of it (:func:`start_throwaway_postgres`). The URL's password never reaches a log, a record
or the terminal.

A started server leaves a record in its data dir (:data:`SERVER_RECORD`, see
:mod:`ml_backend.process_record`) until it is stopped, so that ``habla-ls labelstudio down`` can stop the
server of a data dir from another shell, and ``up`` does not start a second one on the same database.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import httpx

from ml_backend.process_record import (
    STOP_TIMEOUT,
    ProcessRecord,
    is_running,
    read_record,
    remove_record,
    stop_child,
    stop_process,
    wait_port_closed,
    write_record,
)
from ml_backend.whisper_files import cache_dir, file_lock
from sync.postgres import (
    PostgresCluster,
    PostgresDsn,
    PostgresError,
    find_bin_dir,
    give_to,
    label_studio_environment,
    private_temp_dir,
    server_major_version,
    server_user,
)

log = logging.getLogger(__name__)

LABEL_STUDIO_VERSION = "1.23.2"
CREDENTIALS_FILE = "habla-ls-credentials.json"
SERVER_RECORD = "habla-ls-server.json"  # {"pid", "port", ...}: the demo reads "port" to reuse a running server
RECORD_COMMAND = "label-studio"  # a word of the server's command line
OWNER_COMMAND = "labelstudio"  # a word of `habla-ls labelstudio up`'s command line

# Fixed credentials of the cached template: only ever used by test servers on 127.0.0.1.
TEMPLATE_USERNAME = "tests@habla-ls.local"
TEMPLATE_PASSWORD = "habla-ls-tests"
TEMPLATE_TOKEN = "0123456789abcdef0123456789abcdef01234567"
TEMPLATE_DATABASE = "habla_ls_template"  # in the cached PostgreSQL cluster


class LabelStudioStartError(RuntimeError):
    pass


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)
    token: str = field(repr=False)

    @classmethod
    def generate(cls, username: str = "teacher@habla-ls.local") -> Credentials:
        return cls(username, secrets.token_urlsafe(12), secrets.token_hex(20))

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"username": self.username, "password": self.password, "token": self.token}, fh)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> Credentials:
        data = json.loads(path.read_text())
        return cls(data["username"], data["password"], data["token"])


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def label_studio_executable() -> str:
    candidate = Path(sys.executable).parent / "label-studio"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("label-studio")
    if not found:
        raise LabelStudioStartError(
            "label-studio is not installed: pip install 'habla-ls[server]' (label-studio==1.23.2)"
        )
    return found


def server_environment(
    data_dir: Path, credentials: Credentials, document_root: Path, database: PostgresDsn | None = None
) -> dict[str, str]:
    """Label Studio's environment: SQLite in ``data_dir``, or PostgreSQL at ``database``."""
    env = label_studio_environment(dict(os.environ), database)
    env.update(
        {
            "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
            "LABEL_STUDIO_USERNAME": credentials.username,
            "LABEL_STUDIO_PASSWORD": credentials.password,
            "LABEL_STUDIO_USER_TOKEN": credentials.token,
            # Without it a `Token` header gets 401; only read when the organisation is created.
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            # No outbound calls from the server.
            "SENTRY_DSN": "",
            "FRONTEND_SENTRY_DSN": "",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
            # Our ML backend and webhooks live on 127.0.0.1.
            "ML_BLOCK_LOCAL_IP": "false",
            "SSRF_PROTECTION_ENABLED": "false",
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(document_root),
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class LabelStudioServer:
    """One Label Studio process; a context manager that stops it by PID (its whole process group)."""

    def __init__(
        self,
        data_dir: Path,
        credentials: Credentials,
        *,
        port: int | None = None,
        document_root: Path | None = None,
        log_path: Path | None = None,
        database_url: str | None = None,
    ):
        self.data_dir = Path(data_dir).resolve()
        # Parsed now so that a bad URL fails before anything starts; None: SQLite in the data dir.
        self.database = PostgresDsn.parse(database_url) if database_url else None
        self.credentials = credentials
        self.port = port or free_port()
        self.document_root = Path(document_root or self.data_dir).resolve()
        self.log_path = log_path or self.data_dir / "label-studio.log"
        self.process: subprocess.Popen | None = None
        # Added to the server's record, e.g. {"owner": {...}}: the `up` process that stops it on SIGTERM.
        self.record_extra: dict = {}

    @property
    def record_path(self) -> Path:
        return self.data_dir / SERVER_RECORD

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token(self) -> str:
        return self.credentials.token

    @property
    def database_url(self) -> str | None:
        """The PostgreSQL URL, password included (to start another server on the same database), or None."""
        return self.database.url if self.database else None

    def describe_database(self) -> str:
        """For people: where the data is, without the password."""
        return f"PostgreSQL {self.database.redacted()}" if self.database else f"SQLite in {self.data_dir}"

    def start(self, timeout: float = 180.0) -> LabelStudioServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not port_is_free(self.port):
            raise LabelStudioStartError(f"port {self.port} on 127.0.0.1 is busy: choose another with --port")
        if self.database is not None:
            # Label Studio itself would only say so in its log, after a while.
            try:
                self.database.check()
            except PostgresError as exc:
                raise LabelStudioStartError(f"cannot use PostgreSQL {self.database.redacted()}: {exc}") from None
        cmd = [
            label_studio_executable(),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(self.port),
        ]
        self._log_fh = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            cmd,
            env=server_environment(self.data_dir, self.credentials, self.document_root, self.database),
            stdout=self._log_fh,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise
        write_record(
            self.record_path,
            ProcessRecord.for_process(
                self.process.pid, self.port, RECORD_COMMAND, url=self.url, document_root=str(self.document_root),
                database=self.database.redacted() if self.database else "sqlite", **self.record_extra,
            ),
        )
        return self

    def wait_ready(self, timeout: float) -> None:
        # Label Studio silently moves to port+1 when the port is busy, so being "up" means *our* token is
        # accepted on *our* port while our process is alive.
        deadline = time.monotonic() + timeout
        headers = {"Authorization": f"Token {self.token}"}
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise LabelStudioStartError(
                    f"Label Studio exited with code {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                response = httpx.get(f"{self.url}/api/current-user/whoami", headers=headers, timeout=2)
                if response.status_code == 200:
                    return
            time.sleep(0.3)
        raise LabelStudioStartError(f"Label Studio not ready on {self.url} after {timeout:.0f} s; see {self.log_path}")

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None:
            stop_child(self.process, timeout=timeout)
            remove_record(self.record_path, self.process.pid)
        if getattr(self, "_log_fh", None):
            self._log_fh.close()
            self._log_fh = None

    def __enter__(self) -> LabelStudioServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


def running_server(data_dir: Path) -> ProcessRecord | None:
    """The record of the server running from ``data_dir``, or None (no record, or a stale one)."""
    record = read_record(Path(data_dir) / SERVER_RECORD)
    if record is None:
        return None
    record = record if record.command else replace(record, command=RECORD_COMMAND)  # the demo's own record
    return record if is_running(record) else None


def stop_recorded_server(data_dir: Path, timeout: float = STOP_TIMEOUT) -> tuple[str, ProcessRecord | None]:
    """Stops the server that runs from ``data_dir`` by its record, and waits until its port is closed.

    Returns ("none" | "stale" | "stopped" | "stuck", the record). A server that ``habla-ls labelstudio up``
    watches is stopped through that process (SIGTERM: it stops the server and exits like on Ctrl-C);
    one without a living owner (the demo's) gets SIGTERM to its process group, then SIGKILL.
    """
    path = Path(data_dir) / SERVER_RECORD
    record = read_record(path)
    if record is None:
        return "none", None
    if not record.command:
        record = replace(record, command=RECORD_COMMAND)
    if not is_running(record):
        remove_record(path, record.pid)
        return "stale", record
    owner = record.extra.get("owner")
    if isinstance(owner, dict) and owner.get("pid") and int(owner["pid"]) != os.getpid():
        watcher = ProcessRecord(int(owner["pid"]), record.port, owner.get("started"), OWNER_COMMAND)
        stop_process(watcher, timeout=timeout)
    if is_running(record):
        stop_process(record, group=True, timeout=timeout)
    if is_running(record) or not wait_port_closed(record.port):
        return "stuck", record
    remove_record(path, record.pid)
    return "stopped", record


def template_dir() -> Path:
    return cache_dir() / f"labelstudio-{LABEL_STUDIO_VERSION}-template"


def template_credentials() -> Credentials:
    return Credentials(TEMPLATE_USERNAME, TEMPLATE_PASSWORD, TEMPLATE_TOKEN)


def ensure_template() -> Path:
    """The migrated template data dir, built on first use (~25 s) under a lock so parallel runs share it."""
    target = template_dir()
    with file_lock(cache_dir() / "template.lock"):
        if (target / ".complete").exists():
            return target
        building = target.with_name(target.name + ".building")
        shutil.rmtree(building, ignore_errors=True)
        log.info("building the Label Studio template data dir (migrations, ~25 s) in %s", building)
        with LabelStudioServer(building, template_credentials(), log_path=building.parent / "template-build.log"):
            pass
        # Logs and media are per server; the template is the database and its secret key.
        for extra in ("media", "export"):
            shutil.rmtree(building / extra, ignore_errors=True)
        (building / ".complete").write_text(LABEL_STUDIO_VERSION)
        shutil.rmtree(target, ignore_errors=True)
        os.replace(building, target)
        return target


def copy_template(destination: Path) -> Path:
    source = ensure_template()
    shutil.copytree(source, destination, ignore=shutil.ignore_patterns(".complete", "*.log"))
    return destination


def start_test_server(
    work_dir: Path, document_root: Path, port: int | None = None, *, database_url: str | None = None
) -> LabelStudioServer:
    """A throw-away server with the template's account (what the pytest fixture and the bench use).

    SQLite: a copy of the template data dir. PostgreSQL: ``database_url`` must name a migrated copy of
    the template database, e.g. ``start_throwaway_postgres().new_database()``; the data dir then only
    holds Label Studio's media and secret key.
    """
    data_dir = Path(work_dir) / "label-studio-data"
    if database_url:
        data_dir.mkdir(parents=True)
    else:
        copy_template(data_dir)
    return LabelStudioServer(
        data_dir, template_credentials(), port=port, document_root=document_root, database_url=database_url
    ).start()


def postgres_template_dir(major: int) -> Path:
    return cache_dir() / f"labelstudio-{LABEL_STUDIO_VERSION}-postgres{major}-template"


def ensure_postgres_template() -> Path:
    """A cached PostgreSQL cluster (``pgdata/``, ``cluster.json``) holding Label Studio's migrated template
    database; built on first use (initdb and migrations, about a minute) under a lock."""
    bin_dir = find_bin_dir()
    target = postgres_template_dir(server_major_version(bin_dir))
    with file_lock(cache_dir() / "postgres-template.lock"):
        if (target / ".complete").exists():
            return target
        log.info("building the Label Studio PostgreSQL template (initdb and migrations, ~1 min) in %s", target)
        work = private_temp_dir("habla-ls-pg-template-")
        try:
            cluster = PostgresCluster.init(
                work / "pgdata", durable=False, bin_dir=bin_dir, log_path=cache_dir() / "postgres-template-build.log"
            )
            with cluster:
                url = cluster.new_database(TEMPLATE_DATABASE)
                build_log = cache_dir() / "postgres-template-build-labelstudio.log"
                with LabelStudioServer(work / "ls-data", template_credentials(), database_url=url, log_path=build_log):
                    pass  # up means migrated, with the template's account
            building = target.with_name(target.name + ".building")
            shutil.rmtree(building, ignore_errors=True)
            building.mkdir(parents=True)
            shutil.copytree(work / "pgdata", building / "pgdata", symlinks=True)
            info = {"superuser": cluster.superuser, "password": cluster.password, "template": TEMPLATE_DATABASE}
            fd = os.open(building / "cluster.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as fh:
                json.dump(info, fh)
            (building / ".complete").write_text(LABEL_STUDIO_VERSION)
            shutil.rmtree(target, ignore_errors=True)
            os.replace(building, target)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return target


def start_throwaway_postgres(*, durable: bool = True, timeout: float = 60.0) -> PostgresCluster:
    """A private PostgreSQL on a free 127.0.0.1 port, from a copy of the cached template cluster (~1 s).

    ``cluster.new_database()`` gives a fresh migrated Label Studio database's URL for
    :func:`start_test_server`; ``cluster.stop()`` stops it and deletes its files. ``durable=False``
    (tests) turns fsync off; keep the default when timing things.
    """
    source = ensure_postgres_template()
    info = json.loads((source / "cluster.json").read_text())
    work = private_temp_dir()
    try:
        shutil.copytree(source / "pgdata", work / "pgdata", symlinks=True)
        os.chmod(work / "pgdata", 0o700)
        give_to(work / "pgdata", server_user())
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    cluster = PostgresCluster(
        work / "pgdata", info["superuser"], info["password"], durable=durable, template=info["template"], throwaway=True
    )
    try:
        return cluster.start(timeout)
    except BaseException:
        cluster.stop()
        raise


def open_persistent_server(
    data_dir: Path, document_root: Path, port: int = 8080, *, database_url: str | None = None
) -> LabelStudioServer:
    """A user's server: created once with fresh random credentials (saved 0600 beside the data), then reused."""
    if database_url:
        PostgresDsn.parse(database_url)  # a bad URL fails before anything is written
    data_dir = Path(data_dir)
    credentials_path = data_dir / CREDENTIALS_FILE
    if credentials_path.exists():
        credentials = Credentials.load(credentials_path)
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        credentials = Credentials.generate()
        credentials.save(credentials_path)
    return LabelStudioServer(data_dir, credentials, port=port, document_root=document_root, database_url=database_url)
