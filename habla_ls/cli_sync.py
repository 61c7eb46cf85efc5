"""``habla-ls sync push|pull`` and ``habla-ls labelstudio up|down``."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path
from typing import NoReturn

import click

from habla_ls.config import ConfigError, Settings
from sync.ls_errors import LabelStudioError


def _settings(ctx: click.Context, **overrides: object) -> Settings:
    settings: Settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    values = {k: v for k, v in overrides.items() if v is not None}
    if "recordings" in values:
        values["recordings"] = Path(str(values["recordings"])).expanduser()
    if "label_studio_url" in values:
        values["label_studio_url"] = str(values["label_studio_url"]).rstrip("/")
    from dataclasses import replace

    return replace(settings, **values)


def _fail(message: str) -> NoReturn:
    raise click.ClickException(message)


@click.group("sync")
def sync_group() -> None:
    """Move data between Habla's recordings and Label Studio.

    \b
    push: copy new segments into the archive and create Label Studio tasks with Habla's transcript
          prefilled (idempotent: run it as often as you like).
    pull: turn the annotations into the dataset manifest (datasets/manifest.jsonl and .csv).
    """


_url_option = click.option("--url", "label_studio_url", default=None, help="Label Studio URL (default $LABEL_STUDIO_URL).")
_project_option = click.option("--project", "project_title", default=None, help="Label Studio project title.")


@sync_group.command("push")
@click.option(
    "--recordings",
    type=click.Path(file_okay=False),
    default=None,
    help="Habla's recordings dir, holding <session>_<YYYYmmdd>_<HHMMSS>/ dirs (default $HABLA_RECORDINGS).",
)
@_url_option
@_project_option
@click.option("--session", "sessions", multiple=True, help="Only this session dir name (repeatable).")
@click.option("--limit", type=click.IntRange(min=0), default=None, help="Push at most this many new segments.")
@click.option("--batch-size", type=click.IntRange(min=1), default=1000, show_default=True, help="Tasks per import call.")
@click.option("--dry-run", is_flag=True, help="Check the recordings and say what would be pushed; change nothing.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@click.pass_context
def push_command(
    ctx: click.Context,
    recordings: str | None,
    label_studio_url: str | None,
    project_title: str | None,
    sessions: tuple[str, ...],
    limit: int | None,
    batch_size: int,
    dry_run: bool,
    no_progress: bool,
) -> None:
    """Push new Habla segments to Label Studio as tasks with a prefilled transcript.

    Every segment is first copied into the archive (<home>/archive, 16 kHz mono WAV named by sha256),
    so it survives Habla deleting old sessions. The prefill is the best transcript Habla has: its
    corrected ground truth, else its ground truth, else the live transcript, else none (the ML backend
    fills it). Files that cannot be used are listed with the reason and the rest goes on. A push that
    was interrupted can simply be run again: it never creates a second task for a segment.
    """
    from sync.push import PushOptions, push

    settings = _settings(ctx, recordings=recordings, label_studio_url=label_studio_url, project_title=project_title)
    if settings.recordings is None:
        _fail("no recordings dir: pass --recordings or set HABLA_RECORDINGS")
    if not settings.recordings.is_dir():
        _fail(f"{settings.recordings}: recordings dir not found")
    options = PushOptions(
        recordings=settings.recordings,
        sessions=sessions,
        limit=limit,
        batch_size=batch_size,
        dry_run=dry_run,
        progress=not no_progress,
    )
    try:
        project = settings.label_studio_project(need_token=not dry_run)
        summary = push(project, settings.work_paths(), options)
    except (LabelStudioError, ConfigError, ValueError) as exc:
        _fail(str(exc))
    for problem in summary.skipped:
        click.echo(f"skipped {problem}", err=True)
    for line in summary.lines():
        click.echo(line)


@sync_group.command("pull")
@_url_option
@_project_option
@click.option(
    "--write-habla",
    is_flag=True,
    help="Also write the corrections into each Habla session dir as corrected_ground_truth.json.",
)
@click.option(
    "--full",
    is_flag=True,
    help="Re-read every annotated task instead of only those Label Studio lists as changed since the last "
    "pull (slower: about as long as Label Studio's own JSON export of the project). For when a pull was interrupted in a way you doubt, or Label Studio's "
    "database was restored from a backup.",
)
@click.pass_context
def pull_command(
    ctx: click.Context, label_studio_url: str | None, project_title: str | None, write_habla: bool, full: bool
) -> None:
    """Write the annotations made in Label Studio into the dataset manifest.

    One transcript per task (the latest annotation that was not cancelled); skipped, empty and
    noise / unintelligible / wrong-language tasks are left out and counted. Rows point at the archived
    audio. A pull with nothing new leaves the manifest files untouched.
    """
    from sync.pull import pull

    settings = _settings(ctx, label_studio_url=label_studio_url, project_title=project_title)
    try:
        summary = pull(settings.label_studio_project(), settings.work_paths(), write_habla=write_habla, full=full)
    except (LabelStudioError, ConfigError, ValueError) as exc:
        _fail(str(exc))
    for problem in summary.problems:
        click.echo(f"warning: {problem}", err=True)
    for line in summary.lines():
        click.echo(line)


@click.group("labelstudio")
def labelstudio_group() -> None:
    """Run a local Label Studio server for habla-ls."""


_data_dir_option = click.option(
    "--data-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Label Studio's own data (default <home>/label-studio). Kept between runs.",
)


def _data_dir(settings: Settings, data_dir: str | None) -> Path:
    return Path(data_dir).expanduser().resolve() if data_dir else settings.home.expanduser().resolve() / "label-studio"


@labelstudio_group.command("up")
@click.option("--port", type=int, default=8080, show_default=True)
@_data_dir_option
@click.option(
    "--database-url",
    envvar="HABLA_LS_LABEL_STUDIO_DATABASE_URL",
    default=None,
    metavar="URL",
    help="Keep Label Studio's database in PostgreSQL: postgresql://user:password@host:port/dbname "
    "(default $HABLA_LS_LABEL_STUDIO_DATABASE_URL; unset: SQLite in the data dir). The database must exist; "
    "Label Studio creates its tables on the first start. The password is never printed.",
)
@click.pass_context
def up_command(ctx: click.Context, port: int, data_dir: str | None, database_url: str | None) -> None:
    """Start Label Studio on 127.0.0.1 and keep it running until Ctrl-C.

    The first start creates an account with a random password and API token (saved, mode 0600, in the
    data dir) and prints them; later starts reuse them. Audio under the document root (default: the
    habla-ls work dir) is served to the labelling page. `habla-ls labelstudio down` stops it from
    another shell.
    """
    from ml_backend.process_record import ProcessRecord
    from sync.ls_server import LabelStudioStartError, open_persistent_server, running_server
    from sync.postgres import DatabaseUrlError

    settings = _settings(ctx)
    home = settings.home.expanduser().resolve()
    home.mkdir(parents=True, exist_ok=True)
    directory = _data_dir(settings, data_dir)
    running = running_server(directory)
    if running is not None:
        _fail(
            f"Label Studio already runs from {directory} on 127.0.0.1:{running.port} (pid {running.pid}); "
            "`habla-ls labelstudio down` stops it"
        )
    try:
        server = open_persistent_server(directory, settings.document_root, port=port, database_url=database_url or None)
    except DatabaseUrlError as exc:
        _fail(f"--database-url: {exc}")
    # SIGTERM to this process stops the server cleanly (below): `down` goes through it while it lives.
    me = ProcessRecord.for_process(os.getpid(), port, "labelstudio")
    server.record_extra = {"owner": {"pid": me.pid, "started": me.started}}
    click.echo(
        f"starting Label Studio on 127.0.0.1:{port}, database: {server.describe_database()} "
        "(the first start on a new database runs its migrations: 30-60 s) ..."
    )
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        try:
            server.start()
        except LabelStudioStartError as exc:
            _fail(str(exc))
        click.echo(f"Label Studio: {server.url}")
        click.echo(f"login:        {server.credentials.username}")
        click.echo(f"password:     {server.credentials.password}")
        click.echo(f"API token:    {server.credentials.token}")
        click.echo("for habla-ls, in this shell:")
        click.echo(f"  export LABEL_STUDIO_URL={server.url} LABEL_STUDIO_API_KEY=<the token above> HABLA_LS_HOME={home}")
        click.echo(f"  export LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT={settings.document_root}")
        click.echo("Ctrl-C (or `habla-ls labelstudio down` in another shell) stops it.")
        while server.process is not None and server.process.poll() is None:
            time.sleep(1)
        click.echo(f"Label Studio exited (code {server.process.returncode}); see {server.log_path}", err=True)
    except KeyboardInterrupt:
        click.echo("stopping Label Studio ...")
    finally:
        server.stop()


@labelstudio_group.command("down")
@_data_dir_option
@click.pass_context
def down_command(ctx: click.Context, data_dir: str | None) -> None:
    """Stop the Label Studio that `habla-ls labelstudio up` (or the demo) started from this data dir.

    It is found by the record the server keeps in its data dir, never by process name. Nothing running
    is not an error (exit 0, and says so); a server that does not stop is (exit 1).
    """
    from sync.ls_server import stop_recorded_server

    directory = _data_dir(_settings(ctx), data_dir)
    state, record = stop_recorded_server(directory)
    if record is None:
        click.echo(f"no Label Studio started by habla-ls is running from {directory}")
    elif state == "stale":
        click.echo(f"Label Studio from {directory} (pid {record.pid}) had already exited; removed its record")
    elif state == "stuck":
        _fail(f"Label Studio from {directory} (pid {record.pid}, port {record.port}) did not stop")
    else:
        click.echo(f"stopped Label Studio on 127.0.0.1:{record.port} (pid {record.pid})")
