"""``habla-ls backend ...``: serve the current model to Label Studio, stop it, and register it with a project.

``serve`` runs :mod:`ml_backend.server` under uvicorn and keeps a record of itself (see
:mod:`ml_backend.process_record`) that ``stop`` finds it by. ``connect`` talks to Label Studio through
:class:`sync.ls_client.LabelStudioClient` (label-studio-sdk, one place for auth and errors), and a
successful connect is followed by the prefill decision (:mod:`habla_ls.serving_change`: the project's
prefill version and the backend's title).
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx

from habla_ls.config import ConfigError, Settings

if TYPE_CHECKING:
    from sync.ls_client import LabelStudioClient

DEFAULT_PORT = 9090
BACKEND_TITLE = "habla-ls whisper"
# Records of running backends (see ml_backend.process_record), one per port, under the work dir.
RECORDS_DIR = "run"
RECORD_COMMAND = "backend"  # a word of `habla-ls backend serve`'s command line


def record_path(home: Path, port: int) -> Path:
    """Where ``backend serve`` on ``port`` keeps its process record under the work dir ``home``."""
    return Path(home) / RECORDS_DIR / f"backend-{port}.json"


def _local_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "", "::") else host


def served_title(backend_url: str) -> str:
    """The version the backend serves (its ``/health``), else :data:`BACKEND_TITLE`.

    The backend is titled with its version because Label Studio asks a backend when a task opens in
    the label stream only while the project's prefill version equals the backend's title.
    """
    try:
        version = httpx.get(backend_url.rstrip("/") + "/health", timeout=10).json().get("model_version")
    except (httpx.HTTPError, ValueError, AttributeError):
        version = None
    return str(version) if version else BACKEND_TITLE


def _project_id(client: LabelStudioClient, project: str) -> int:
    """A project named by id or by title."""
    from sync.ls_errors import LabelStudioError

    if project.isdigit():
        try:
            return int(client.get_project(int(project))["id"])
        except LabelStudioError as exc:
            if "HTTP 404" not in str(exc):
                raise  # a title made of digits is still looked up below
    found = client.find_project(project)
    if found is None:
        raise LabelStudioError(f"Label Studio at {client.url} has no project titled {project!r}")
    return int(found["id"])


def connect_backend(
    client: LabelStudioClient,
    project: str,
    backend_url: str,
    *,
    title: str | None = None,
    basic_auth: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Registers (or updates) the backend on a project; Label Studio checks /health and /setup on the way.

    The title defaults to the version the backend serves (see :func:`served_title`). Also switches the
    project's "use predictions to prelabel tasks" on (``show_collab_predictions``): with it, opening a
    task that has no prediction makes Label Studio ask the backend. The backend is not interactive:
    interactive pre-annotations are not applied to the page by themselves.
    """
    project_id = _project_id(client, project)
    fields: dict[str, Any] = {"is_interactive": False}
    if basic_auth:
        fields.update(auth_method="BASIC_AUTH", basic_auth_user=basic_auth[0], basic_auth_pass=basic_auth[1])
    backend = client.connect_ml_backend(project_id, backend_url, title=title or served_title(backend_url), **fields)
    client.update_project(project_id, show_collab_predictions=True)
    return backend


@click.group("backend")
def backend_group() -> None:
    """The Label Studio ML backend: prelabels from the served model version, hot-swapped on promote."""


@backend_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (0.0.0.0 in a container).")
@click.option("--port", type=int, default=lambda: int(os.environ.get("PORT") or DEFAULT_PORT), show_default=f"$PORT or {DEFAULT_PORT}")
@click.option("--workers", type=int, default=lambda: int(os.environ.get("WORKERS") or 1), show_default="$WORKERS or 1",
              help="Worker processes; each loads the model once (~0.5 GB for whisper-base).")
@click.option("--threads", type=int, default=lambda: int(os.environ.get("THREADS") or 4), show_default="$THREADS or 4",
              help="Request threads per worker (decoding itself is one batch at a time per model).")
@click.option("--model", type=click.Path(exists=True), default=None,
              help="Serve this model/version/registry dir instead of $HABLA_LS_HOME/models (its CURRENT).")
@click.pass_obj
def serve_command(settings: Settings, host: str, port: int, workers: int, threads: int, model: str | None) -> None:
    """Run the backend (FastAPI + uvicorn). Configuration comes from the environment and habla-ls
    settings; see ml_backend.config.ENV_VARS. Point Label Studio at http://HOST:PORT, or run
    `habla-ls backend connect --project NAME`."""
    import uvicorn

    from ml_backend.process_record import ProcessRecord, is_running, read_record, remove_record, write_record

    # Worker processes build the app from the environment, so settings travel there.
    os.environ["HABLA_LS_HOME"] = str(settings.home.resolve())
    os.environ.setdefault("LABEL_STUDIO_URL", settings.label_studio_url)
    if settings.label_studio_api_key:
        os.environ.setdefault("LABEL_STUDIO_API_KEY", settings.label_studio_api_key)
    os.environ.setdefault("HABLA_LS_LANGUAGE", settings.language)
    os.environ["THREADS"] = str(threads)
    if model:
        os.environ["HABLA_LS_MODEL"] = os.path.abspath(model)

    record_file = record_path(settings.home.resolve(), port)
    running = read_record(record_file)
    if running is not None and is_running(running):
        raise click.ClickException(
            f"a habla-ls backend from {settings.home} already runs on port {port} (pid {running.pid}); "
            f"`habla-ls backend stop --port {port}` stops it"
        )
    # Written before the port is bound: `backend stop` must find a backend that is still loading.
    write_record(record_file, ProcessRecord.for_process(os.getpid(), port, RECORD_COMMAND, host=host))
    click.echo(f"habla-ls backend on http://{host}:{port} ({workers} worker(s) x {threads} threads)", err=True)
    try:
        uvicorn.run("ml_backend.server:app_factory", factory=True, host=host, port=port, workers=workers, log_level="info")
    finally:
        remove_record(record_file, os.getpid())


@backend_group.command("stop")
@click.option("--port", type=int, default=None, help="Only the backend on this port (default: every one started from this work dir).")
@click.pass_obj
def stop_command(settings: Settings, port: int | None) -> None:
    """Stop the backend(s) that `habla-ls backend serve` started from this work dir (found by the record
    it keeps in <home>/run/), and wait until the port is closed. Nothing running is not an error."""
    from ml_backend.process_record import (
        is_running,
        read_record,
        remove_record,
        stop_process,
        wait_port_closed,
    )

    home = settings.home.resolve()
    paths = [record_path(home, port)] if port is not None else sorted((home / RECORDS_DIR).glob("backend-*.json"))
    stopped = 0
    for path in paths:
        record = read_record(path)
        if record is None:
            continue
        if not is_running(record):
            remove_record(path, record.pid)
            click.echo(f"the backend on port {record.port} (pid {record.pid}) had already exited; removed its record")
            continue
        stop_process(record)
        host = _local_host(str(record.extra.get("host") or "127.0.0.1"))
        if is_running(record) or not wait_port_closed(record.port, host):
            raise click.ClickException(f"the backend on port {record.port} (pid {record.pid}) did not stop")
        remove_record(path, record.pid)
        click.echo(f"stopped the habla-ls backend on port {record.port} (pid {record.pid})")
        stopped += 1
    if not stopped:
        where = f" on port {port}" if port is not None else ""
        click.echo(f"no habla-ls backend started from {home} is running{where}")


@backend_group.command("connect")
@click.option("--project", required=True, help="Label Studio project title or id.")
@click.option("--url", "backend_url", default=lambda: f"http://127.0.0.1:{os.environ.get('PORT') or DEFAULT_PORT}",
              show_default="http://127.0.0.1:$PORT", help="Where Label Studio reaches this backend.")
@click.option("--title", default=None, help="Title in Label Studio (default: the version the backend serves).")
@click.pass_obj
def connect_command(settings: Settings, project: str, backend_url: str, title: str | None) -> None:
    """Register the running backend with a Label Studio project (its predictions then prefill tasks).
    Uses BASIC_AUTH_USER/BASIC_AUTH_PASS from the environment if the backend requires them."""
    from habla_ls.serving_change import after_serving_change
    from sync.ls_client import LabelStudioClient
    from sync.ls_errors import LabelStudioError

    user, password = os.environ.get("BASIC_AUTH_USER"), os.environ.get("BASIC_AUTH_PASS")
    try:
        with LabelStudioClient.for_project(settings.label_studio_project()) as client:
            backend = connect_backend(
                client, project, backend_url, title=title, basic_auth=(user, password) if user and password else None
            )
    except (ConfigError, LabelStudioError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(
        f"connected ML backend {backend.get('id')} ({backend_url}, titled {backend.get('title')!r}) to project "
        f"{project!r}; state {backend.get('state')}"
    )
    project_id = int(project) if project.isdigit() else None
    if project and project_id is None:
        settings = dataclasses.replace(settings, project_title=project)
    # The backend answers for missing predictions from now on: nothing to transcribe here.
    after_serving_change(settings, predict=False, echo=click.echo, project_id=project_id)
