"""PostgreSQL for Label Studio: a database URL that is passed on but never shown, and a throw-away
PostgreSQL server of our own (tests, benchmarks) run from the distribution's binaries.

Label Studio 1.23.2 reads no database URL, only ``DJANGO_DB=postgresql`` and ``POSTGRE_NAME``,
``POSTGRE_USER``, ``POSTGRE_PASSWORD``, ``POSTGRE_HOST``, ``POSTGRE_PORT`` (each also with a
``LABEL_STUDIO_`` or ``HEARTEX_`` prefix, which wins), so a URL is split into those.

PostgreSQL refuses to run as root: as root the cluster's files belong to the ``postgres`` system user
(created by Debian's package) and the server runs as that user, in a directory under the system temp
dir (pytest's own temp dirs are private to root).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote, urlsplit

from ml_backend.process_record import stop_child

DEFAULT_PORT = 5432
SYSTEM_USER = "postgres"
# Label Studio's settings read these; each may also be set with a LABEL_STUDIO_ or HEARTEX_ prefix.
LABEL_STUDIO_DB_KEYS = ("DJANGO_DB", "POSTGRE_NAME", "POSTGRE_USER", "POSTGRE_PASSWORD", "POSTGRE_HOST", "POSTGRE_PORT")


class DatabaseUrlError(ValueError):
    """A database URL habla-ls cannot use; the message never contains the password."""


class PostgresError(RuntimeError):
    pass


@dataclass(frozen=True)
class PostgresDsn:
    """Where Label Studio's PostgreSQL database is; ``str()`` and ``repr()`` hide the password."""

    user: str
    password: str = field(repr=False)
    host: str
    port: int
    name: str

    @classmethod
    def parse(cls, url: str) -> PostgresDsn:
        """``postgresql://user:password@host:port/dbname`` (``postgres://`` too; user and password %-encoded)."""
        usage = "expected postgresql://user:password@host:port/dbname"
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError:
            # urlsplit's own message may quote the netloc, password included
            raise DatabaseUrlError(f"not a database URL: {usage}") from None
        if parts.scheme not in ("postgresql", "postgres"):
            raise DatabaseUrlError(f"only PostgreSQL database URLs are supported: {usage}")
        if parts.query or parts.fragment:
            # Label Studio takes no connection options (sslmode, ...) from its environment
            raise DatabaseUrlError("database URL options (?...) are not supported: Label Studio cannot pass them on")
        name = unquote(parts.path.lstrip("/"))
        if not name or "/" in name:
            raise DatabaseUrlError(f"the database URL names no database: {usage}")
        if not parts.username:
            raise DatabaseUrlError(f"the database URL names no user: {usage}")
        return cls(
            user=unquote(parts.username),
            password=unquote(parts.password or ""),
            host=parts.hostname or "localhost",
            port=port or DEFAULT_PORT,
            name=name,
        )

    def _url(self, password: str) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        auth = quote(self.user, safe="") + (f":{password}" if password else "")
        return f"postgresql://{auth}@{host}:{self.port}/{quote(self.name, safe='')}"

    @property
    def url(self) -> str:
        """The full URL, password included: for handing to code, never for printing."""
        return self._url(quote(self.password, safe=""))

    def redacted(self) -> str:
        return self._url("***" if self.password else "")

    def __str__(self) -> str:
        return self.redacted()

    def label_studio_env(self) -> dict[str, str]:
        return {
            "DJANGO_DB": "postgresql",
            "POSTGRE_NAME": self.name,
            "POSTGRE_USER": self.user,
            "POSTGRE_PASSWORD": self.password,
            "POSTGRE_HOST": self.host,
            "POSTGRE_PORT": str(self.port),
        }

    def connect(self, database: str | None = None, timeout: float = 5.0):
        """A psycopg connection (autocommit): psycopg comes with Label Studio, so it is imported here."""
        try:
            import psycopg
        except ImportError:
            raise PostgresError("psycopg is not installed (it comes with label-studio: pip install 'habla-ls[server]')") from None
        try:
            return psycopg.connect(
                host=self.host, port=self.port, user=self.user, password=self.password,
                dbname=database or self.name, connect_timeout=max(1, round(timeout)), autocommit=True,
            )
        except psycopg.Error as exc:
            raise PostgresError(self.hide(_first_line(exc))) from None

    def check(self, timeout: float = 5.0) -> None:
        """Raises PostgresError (one line, no password) unless the database accepts this user."""
        with self.connect(timeout=timeout) as conn:
            conn.execute("SELECT 1")

    def hide(self, text: str) -> str:
        return text.replace(self.password, "***") if self.password else text


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return " ".join(lines[:2]) if lines else type(exc).__name__


def label_studio_environment(env: dict[str, str], dsn: PostgresDsn | None) -> dict[str, str]:
    """``env`` with Label Studio's database settings: ``dsn``, or its SQLite file when None.

    Prefixed variants are dropped first: Label Studio prefers ``LABEL_STUDIO_POSTGRE_HOST`` over
    ``POSTGRE_HOST``, so one left in the caller's environment would silently win over the URL.
    """
    shadowing = {prefix + key for key in LABEL_STUDIO_DB_KEYS for prefix in ("", "LABEL_STUDIO_", "HEARTEX_")}
    out = {k: v for k, v in env.items() if k not in shadowing}
    out.update(dsn.label_studio_env() if dsn else {"DJANGO_DB": "sqlite"})
    return out


def find_bin_dir() -> Path:
    """The directory holding ``initdb`` and ``postgres``: on PATH (most systems) or Debian's versioned dirs."""
    on_path = [shutil.which(name) for name in ("initdb", "postgres")]
    if all(on_path) and Path(on_path[0]).parent == Path(on_path[1]).parent:
        return Path(on_path[0]).parent
    versions = []
    for candidate in Path("/usr/lib/postgresql").glob("*/bin"):
        if (candidate / "initdb").exists() and (candidate / "postgres").exists() and candidate.parent.name.isdigit():
            versions.append((int(candidate.parent.name), candidate))
    if not versions:
        raise PostgresError("PostgreSQL is not installed (no initdb/postgres): apt-get install postgresql")
    return max(versions)[1]


def server_major_version(bin_dir: Path) -> int:
    out = subprocess.run([str(bin_dir / "postgres"), "--version"], capture_output=True, text=True, check=True).stdout
    match = re.search(r"\b(\d+)(?:\.\d+)?", out)
    if not match:
        raise PostgresError(f"cannot read the version of {bin_dir / 'postgres'}: {out.strip()!r}")
    return int(match.group(1))


def server_user() -> pwd.struct_passwd | None:
    """The user the server must run as: ``postgres`` when we are root, else None (ourselves)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        raise PostgresError(
            f"PostgreSQL refuses to run as root and there is no {SYSTEM_USER!r} user (apt-get install postgresql creates it)"
        ) from None


def _as_user(user: pwd.struct_passwd | None) -> dict:
    if user is None:
        return {}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": user.pw_dir, "USER": user.pw_name, "LC_ALL": "C"}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [], "env": env}


def give_to(path: Path, user: pwd.struct_passwd | None) -> None:
    """Hands a directory tree to the server's user (no-op when we are not root)."""
    if user is None:
        return
    os.chown(path, user.pw_uid, user.pw_gid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in [*(os.path.join(root, d) for d in dirs), *(os.path.join(root, f) for f in files)]:
            os.chown(name, user.pw_uid, user.pw_gid, follow_symlinks=False)


def private_temp_dir(prefix: str = "habla-ls-pg-") -> Path:
    """A fresh dir the server's user owns, where it can reach it (the system temp dir, never a private one)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    give_to(path, server_user())
    return path


class PostgresCluster:
    """One PostgreSQL server on 127.0.0.1 over a data dir (``initdb``'s output), run as a child process.

    ``durable=False`` turns off fsync and friends: for throw-away databases only (a crash loses them).
    ``template`` names the database :meth:`new_database` clones. A ``throwaway`` cluster's directory
    (``data_dir``'s parent) is deleted by :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: Path,
        superuser: str,
        password: str,
        *,
        port: int | None = None,
        durable: bool = True,
        template: str | None = None,
        throwaway: bool = False,
        bin_dir: Path | None = None,
        log_path: Path | None = None,
    ):
        self.data_dir = Path(data_dir)
        self.superuser = superuser
        self._password = password
        self.port = port
        self.durable = durable
        self.template = template
        self.throwaway = throwaway
        self.bin_dir = bin_dir or find_bin_dir()
        self.log_path = Path(log_path) if log_path else self.data_dir.parent / "postgres.log"
        self.process: subprocess.Popen | None = None

    def __repr__(self) -> str:
        return f"PostgresCluster({str(self.data_dir)!r}, port={self.port})"

    @classmethod
    def init(cls, data_dir: Path, *, superuser: str = "habla_ls", password: str | None = None, **kwargs) -> PostgresCluster:
        """``initdb`` a new cluster in ``data_dir`` (which must not exist; its parent must be the server user's)."""
        bin_dir = kwargs.pop("bin_dir", None) or find_bin_dir()
        password = password or secrets.token_urlsafe(18)
        user = server_user()
        pwfile = data_dir.parent / ".pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(password + "\n")
        give_to(pwfile, user)
        try:
            done = subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(data_dir), "-U", superuser, f"--pwfile={pwfile}",
                 "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"],
                capture_output=True, text=True, cwd=data_dir.parent, **_as_user(user),
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode != 0:
            lines = (done.stderr or done.stdout).strip().splitlines()
            last = [line for line in lines if "error:" in line][:1] or lines[-1:]
            raise PostgresError(f"initdb failed in {data_dir}: {' '.join(last) or f'exit {done.returncode}'}")
        return cls(data_dir, superuser, password, bin_dir=bin_dir, **kwargs)

    @property
    def password(self) -> str:
        return self._password

    def dsn(self, database: str = "postgres") -> PostgresDsn:
        if self.port is None:
            raise PostgresError("the cluster has not been started")
        return PostgresDsn(self.superuser, self._password, "127.0.0.1", self.port, database)

    def database_url(self, database: str) -> str:
        return self.dsn(database).url

    def start(self, timeout: float = 60.0) -> PostgresCluster:
        chosen = self.port is None
        for _attempt in range(3):
            if chosen:
                self.port = _free_port()
            try:
                self._start_once(timeout)
                return self
            except _PortTaken:
                if not chosen:
                    raise PostgresError(f"port {self.port} on 127.0.0.1 is busy") from None
        raise PostgresError("no free port for PostgreSQL after 3 tries")

    def _start_once(self, timeout: float) -> None:
        user = server_user()
        cmd = [
            str(self.bin_dir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port),
            "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.data_dir.parent}",
            "-c", "max_connections=200",  # one Label Studio opens a few per worker thread; tests run several
        ]
        if not self.durable:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"]
        with open(self.log_path, "ab") as log_fh:
            offset = log_fh.tell()
            self.process = subprocess.Popen(
                cmd, stdout=log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, cwd=self.data_dir.parent, **_as_user(user),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                text = self._log_since(offset)
                if "could not bind" in text or "Address already in use" in text:
                    raise _PortTaken
                last = [line for line in text.splitlines() if line.strip()][-1:]
                raise PostgresError(f"PostgreSQL exited with code {self.process.returncode}: {' '.join(last)} (log: {self.log_path})")
            with contextlib.suppress(PostgresError):
                self.dsn().check(timeout=2)
                return
            time.sleep(0.1)
        self.stop()
        raise PostgresError(f"PostgreSQL not ready on 127.0.0.1:{self.port} after {timeout:.0f} s; see {self.log_path}")

    def _log_since(self, offset: int) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                return fh.read().decode(errors="replace")
        except OSError:
            return ""

    def new_database(self, name: str | None = None, template: str | None = None) -> str:
        """Creates a database (a copy of ``template``, default this cluster's) and returns its URL."""
        name = name or f"ls_{secrets.token_hex(6)}"
        source = template or self.template
        from psycopg import sql

        statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
        if source:
            statement = sql.SQL("{} TEMPLATE {}").format(statement, sql.Identifier(source))
        with self.dsn().connect() as conn:
            conn.execute(statement)
        return self.database_url(name)

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT: clients are disconnected, data is flushed), SIGKILL if it hangs."""
        if self.process is not None:
            stop_child(self.process, sig=signal.SIGINT, group=False, timeout=timeout)
        if self.throwaway:
            shutil.rmtree(self.data_dir.parent, ignore_errors=True)

    def __enter__(self) -> PostgresCluster:
        return self.start() if self.process is None else self

    def __exit__(self, *exc) -> None:
        self.stop()


class _PortTaken(Exception):
    pass


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
