"""The Label Studio test server, the client's reusable calls (views, lookups by ext_id, predictions),
`habla-ls labelstudio up`/`down`, and Label Studio on PostgreSQL (database URLs, `up --database-url`)."""

from __future__ import annotations

import os
import pwd
import re
import signal
import sqlite3
import stat
import subprocess
import time
from pathlib import Path

import pytest

from ml_backend.process_record import ProcessRecord, write_record
from sync.dm_filters import ext_id_filter
from sync.labelling_config import EMPTY_CHECKS, LABEL_CONFIG, transcription_result
from sync.ls_client import LabelStudioClient
from sync.ls_errors import LabelStudioError
from sync.ls_server import (
    CREDENTIALS_FILE,
    RECORD_COMMAND,
    SERVER_RECORD,
    Credentials,
    LabelStudioServer,
    copy_template,
    free_port,
    running_server,
    server_environment,
    start_test_server,
    start_throwaway_postgres,
    template_credentials,
)
from sync.postgres import DatabaseUrlError, PostgresDsn
from tests.cli_process import HABLA_LS, cli_env, port_free, run_habla_ls

pytestmark = pytest.mark.labelstudio


def test_credentials_are_hidden_and_saved_private(tmp_path: Path) -> None:
    credentials = Credentials.generate()
    assert credentials.token not in repr(credentials) and credentials.password not in repr(credentials)
    credentials.save(tmp_path / "c.json")
    assert stat.S_IMODE((tmp_path / "c.json").stat().st_mode) == 0o600
    assert Credentials.load(tmp_path / "c.json") == credentials


def test_client_round_trip_on_the_real_server(label_studio, unique_project_title) -> None:
    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        assert client.whoami()["email"]
        project, created = client.ensure_project(unique_project_title, LABEL_CONFIG)
        assert created and client.ensure_project(unique_project_title, LABEL_CONFIG) == (client.find_project(unique_project_title), False)
        # The page's word checks need their keys in every task (push writes them empty).
        tasks = [{"data": {"audio": f"/x/{i}.wav", "ext_id": f"s/segment_{i:03d}.wav", **EMPTY_CHECKS}} for i in range(120)]
        ids = client.import_tasks(project["id"], tasks)
        assert len(ids) == 120 and ids == sorted(ids)
        assert [t["id"] for t in client.iter_tasks(project["id"], page_size=50)] == ids  # pages joined
        found = client.tasks_by_ext_id(project["id"], ["s/segment_007.wav", "s/segment_119.wav", "s/none.wav"])
        assert found == {"s/segment_007.wav": [ids[7]], "s/segment_119.wav": [ids[119]]}
        assert client.create_predictions(project["id"], [{"task": ids[0], "result": transcription_result("hola"), "score": 0.3, "model_version": "v1"}]) == 1
        client.update_task_data(ids[0], {"speaker": "alumno"})
        assert client.get_task(ids[0])["data"] == {"audio": "/x/0.wav", "ext_id": "s/segment_000.wav", "speaker": "alumno", **EMPTY_CHECKS}
        view = client.create_view(project["id"], "doubtful first", filters=[ext_id_filter("s/segment_001.wav")], ordering=["tasks:predictions_score"])
        assert [t["id"] for t in client.iter_tasks(project["id"], view_id=view["id"])] == [ids[1]]
        with pytest.raises(LabelStudioError, match="must be 3 to 50 characters"):
            client.create_project("x" * 51, LABEL_CONFIG)
        client.delete_project(project["id"])
        assert client.find_project(unique_project_title) is None





def _ready_data_dir(data_dir: Path, database_url: str | None = None) -> Path:
    """A data dir with the template's credentials and, on SQLite, its migrated database (on PostgreSQL
    ``database_url`` is a migrated copy already), so `labelstudio up` starts in seconds, not after migrations."""
    if database_url:
        data_dir.mkdir(parents=True)
    else:
        copy_template(data_dir)
    template_credentials().save(data_dir / CREDENTIALS_FILE)
    return data_dir


def test_labelstudio_up_then_down_from_another_shell_frees_the_port(tmp_path: Path, ls_database_url) -> None:
    home = tmp_path / "home"
    data_dir = _ready_data_dir(home / "label-studio", ls_database_url)
    port = free_port()
    env = cli_env(home)
    if ls_database_url:
        env["HABLA_LS_LABEL_STUDIO_DATABASE_URL"] = ls_database_url  # the variable, where the next test passes the option
    up = subprocess.Popen([HABLA_LS, "labelstudio", "up", "--port", str(port)], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while running_server(data_dir) is None:
            assert up.poll() is None and time.monotonic() < deadline, up.stdout.read() if up.poll() is not None else "not up"
            time.sleep(0.2)
        record = running_server(data_dir)
        assert record.port == port and record.extra["owner"]["pid"] == up.pid
        with LabelStudioClient(f"http://127.0.0.1:{port}", template_credentials().token) as client:
            assert client.whoami()["id"]
        twice = run_habla_ls("labelstudio", "up", "--port", str(free_port()), home=home)
        assert twice.returncode == 1 and f"Label Studio already runs from {data_dir.resolve()}" in twice.stderr

        down = run_habla_ls("labelstudio", "down", home=home)
        assert down.returncode == 0, down.stderr
        assert down.stdout.strip() == f"stopped Label Studio on 127.0.0.1:{port} (pid {record.pid})"
        assert up.wait(30) == 0
        output = up.stdout.read()
        assert "stopping Label Studio" in output  # `up` stopped it, as on Ctrl-C
        if ls_database_url:
            dsn = PostgresDsn.parse(ls_database_url)
            assert f"database: PostgreSQL {dsn.redacted()}" in output and dsn.password not in output
            assert record.extra["database"] == dsn.redacted()
        else:
            assert f"database: SQLite in {data_dir.resolve()}" in output and record.extra["database"] == "sqlite"
        assert port_free(port) and not (data_dir / SERVER_RECORD).exists()
        with pytest.raises(ProcessLookupError):
            os.kill(record.pid, 0)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)

    again = run_habla_ls("labelstudio", "down", home=home)
    assert again.returncode == 0 and again.stdout.strip() == f"no Label Studio started by habla-ls is running from {data_dir.resolve()}"


def test_labelstudio_down_stops_a_server_nobody_watches_and_never_a_stranger(tmp_path: Path, ls_database_url) -> None:
    # The demo leaves its server running with no `up` process watching it.
    data_dir = _ready_data_dir(tmp_path / "demo" / "label-studio", ls_database_url)
    server = LabelStudioServer(data_dir, template_credentials(), database_url=ls_database_url).start()
    try:
        down = run_habla_ls("labelstudio", "down", "--data-dir", str(data_dir), home=tmp_path / "home")
        assert down.returncode == 0 and down.stdout.startswith(f"stopped Label Studio on 127.0.0.1:{server.port}")
        assert server.process.wait(10) is not None and port_free(server.port)
    finally:
        server.stop()

    # A record left by a server that died with kill -9, whose pid now belongs to another process.
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        stale = ProcessRecord(stranger.pid, free_port(), "1", RECORD_COMMAND)  # started at tick 1: not this one
        write_record(data_dir / SERVER_RECORD, stale)
        down = run_habla_ls("labelstudio", "down", "--data-dir", str(data_dir), home=tmp_path / "home")
        assert down.returncode == 0 and "had already exited; removed its record" in down.stdout
        assert stranger.poll() is None and not (data_dir / SERVER_RECORD).exists()
    finally:
        stranger.kill()
        stranger.wait()


def test_database_urls_are_split_for_label_studio_and_never_show_the_password() -> None:
    dsn = PostgresDsn.parse("postgresql://ls%40team:p%40ss%2Fw0rd%3A@db.example:6543/label%20studio")
    assert (dsn.user, dsn.password, dsn.host, dsn.port, dsn.name) == ("ls@team", "p@ss/w0rd:", "db.example", 6543, "label studio")
    assert dsn.label_studio_env() == {
        "DJANGO_DB": "postgresql", "POSTGRE_NAME": "label studio", "POSTGRE_USER": "ls@team",
        "POSTGRE_PASSWORD": "p@ss/w0rd:", "POSTGRE_HOST": "db.example", "POSTGRE_PORT": "6543",
    }
    assert PostgresDsn.parse(dsn.url) == dsn  # the full URL round-trips, special characters included
    for shown in (str(dsn), repr(dsn), dsn.redacted()):
        assert "w0rd" not in shown and "p%40ss" not in shown
    assert str(dsn) == "postgresql://ls%40team:***@db.example:6543/label%20studio"
    assert PostgresDsn.parse("postgres://u:s@h/db").port == 5432
    assert str(PostgresDsn.parse("postgresql://u@h/db")) == "postgresql://u@h:5432/db"  # no password: no stars
    for bad, reason in [
        ("mysql://u:topsecret@h/db", "only PostgreSQL"),
        ("postgresql://u:topsecret@h:99999/db", "not a database URL"),
        ("postgresql://u:topsecret@h:port/db", "not a database URL"),
        ("postgresql://u:topsecret@h:5432/", "names no database"),
        ("postgresql://:topsecret@h:5432/db", "names no user"),
        ("postgresql://u:topsecret@h/db?sslmode=require", "options (?...) are not supported"),
    ]:
        with pytest.raises(DatabaseUrlError, match=re.escape(reason)) as caught:
            PostgresDsn.parse(bad)
        assert "topsecret" not in str(caught.value)


def test_label_studio_settings_follow_the_url_even_over_prefixed_variables(monkeypatch) -> None:
    # Label Studio prefers LABEL_STUDIO_POSTGRE_HOST to POSTGRE_HOST: one left in the shell must not win.
    monkeypatch.setenv("LABEL_STUDIO_POSTGRE_HOST", "elsewhere")
    monkeypatch.setenv("HEARTEX_DJANGO_DB", "sqlite")
    monkeypatch.setenv("LABEL_STUDIO_DJANGO_DB", "mysql")
    env = server_environment(Path("/d"), template_credentials(), Path("/r"), PostgresDsn.parse("postgresql://u:pw@db:5433/ls"))
    assert {k: env[k] for k in ("DJANGO_DB", "POSTGRE_HOST", "POSTGRE_PORT", "POSTGRE_NAME")} == {
        "DJANGO_DB": "postgresql", "POSTGRE_HOST": "db", "POSTGRE_PORT": "5433", "POSTGRE_NAME": "ls"
    }
    assert not {"LABEL_STUDIO_POSTGRE_HOST", "HEARTEX_DJANGO_DB", "LABEL_STUDIO_DJANGO_DB"} & set(env)
    sqlite_env = server_environment(Path("/d"), template_credentials(), Path("/r"))
    assert sqlite_env["DJANGO_DB"] == "sqlite" and "LABEL_STUDIO_DJANGO_DB" not in sqlite_env


def test_the_session_server_keeps_its_data_in_the_database_it_was_given(label_studio, ls_postgres, ls_client, unique_project_title) -> None:
    created = ls_client.create_project(unique_project_title, LABEL_CONFIG)
    if ls_postgres is None:
        assert label_studio.database is None
        with sqlite3.connect(label_studio.data_dir / "label_studio.sqlite3") as db:
            rows = db.execute("SELECT id FROM project WHERE title = ?", (unique_project_title,)).fetchall()
    else:
        assert label_studio.database is not None and label_studio.database.port == ls_postgres.port
        assert not (label_studio.data_dir / "label_studio.sqlite3").exists()
        with label_studio.database.connect() as db:
            rows = db.execute("SELECT id FROM project WHERE title = %s", (unique_project_title,)).fetchall()
    assert rows == [(created["id"],)]


def test_labelstudio_up_on_postgresql_refuses_bad_urls_in_one_line_without_the_password(tmp_path: Path, postgres_cluster) -> None:
    home = tmp_path / "home"
    good = PostgresDsn.parse(postgres_cluster.new_database())
    wrong_password = PostgresDsn(good.user, "Wr0ngSecret-xyz", good.host, good.port, good.name)
    nobody_listens = PostgresDsn(good.user, good.password, "127.0.0.1", free_port(), good.name)
    for url, expected in [
        (wrong_password.url, f"Error: cannot use PostgreSQL {wrong_password.redacted()}: "),
        (nobody_listens.url, f"Error: cannot use PostgreSQL {nobody_listens.redacted()}: "),
        ("sqlite:///Wr0ngSecret-xyz.db", "Error: --database-url: only PostgreSQL database URLs are supported"),
    ]:
        result = run_habla_ls("labelstudio", "up", "--port", str(free_port()), "--database-url", url, home=home)
        assert result.returncode == 1, result.stdout + result.stderr
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1 and errors[0].startswith(expected), result.stderr
        assert "Wr0ngSecret-xyz" not in result.stdout + result.stderr and good.password not in result.stdout + result.stderr
    assert "password authentication failed" in run_habla_ls(
        "labelstudio", "up", "--port", str(free_port()), "--database-url", wrong_password.url, home=home).stderr
    assert running_server(home / "label-studio") is None


def test_a_server_on_postgresql_restarts_on_its_data(tmp_path: Path, postgres_cluster, ls_document_root) -> None:
    # Stopped and started again on the same database (what `up` does every day), nothing is lost.
    url = postgres_cluster.new_database()
    first = start_test_server(tmp_path / "ls", ls_document_root, database_url=url)
    try:
        with LabelStudioClient(first.url, first.token) as client:
            project = client.create_project("kept across restarts", LABEL_CONFIG)
    finally:
        first.stop()
    with LabelStudioServer(first.data_dir, template_credentials(), database_url=first.database_url) as again, \
            LabelStudioClient(again.url, first.token) as client:
        assert client.get_project(project["id"])["title"] == "kept across restarts"
        record = (first.data_dir / SERVER_RECORD).read_text()
        assert first.database.password not in record and first.database.redacted() in record
    assert first.database.password not in first.log_path.read_text()  # Label Studio's own log


def test_a_throwaway_postgres_hands_out_separate_copies_and_leaves_nothing_behind() -> None:
    cluster = start_throwaway_postgres(durable=False)
    try:
        if os.geteuid() == 0:  # PostgreSQL refuses root: it runs as the postgres system user
            assert os.stat(f"/proc/{cluster.process.pid}").st_uid == pwd.getpwnam("postgres").pw_uid
        first, second = (PostgresDsn.parse(cluster.new_database()) for _ in range(2))
        assert first.name != second.name
        with first.connect() as db:
            # a migrated Label Studio database with the template's account, ready for a server
            assert db.execute("SELECT email FROM htx_user").fetchall() == [(template_credentials().username,)]
            db.execute("CREATE TABLE only_here (x int)")
        with second.connect() as db:
            assert db.execute("SELECT to_regclass('only_here')").fetchone() == (None,)
            assert db.execute("SELECT count(*) FROM htx_user").fetchone() == (1,)
        files, port = cluster.data_dir.parent, cluster.port
        assert files.is_dir()
    finally:
        cluster.stop()
    assert cluster.process.poll() is not None and not files.exists() and port_free(port)
