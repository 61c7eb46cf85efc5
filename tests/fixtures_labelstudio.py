"""A real Label Studio 1.23.2 on 127.0.0.1 for the whole test session (~3 s from a cached template).

``HABLA_LS_TEST_DB=postgresql`` puts its database in a real PostgreSQL: a throw-away cluster started for
the session from Debian's binaries (a copy of a cached cluster holding the migrated template database,
~0.5 s), one fresh database per server (``CREATE DATABASE ... TEMPLATE``, ~0.2 s). Default: SQLite.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

import pytest

from sync.ls_server import LabelStudioServer, start_test_server, start_throwaway_postgres
from sync.postgres import PostgresCluster, PostgresError, find_bin_dir

_project_counter = itertools.count(1)
TEST_DATABASES = ("sqlite", "postgresql")


def labelstudio_test_database() -> str:
    """The database Label Studio's test servers use: $HABLA_LS_TEST_DB, sqlite by default."""
    value = os.environ.get("HABLA_LS_TEST_DB", "").strip().lower() or "sqlite"
    if value not in TEST_DATABASES:
        raise pytest.UsageError(f"HABLA_LS_TEST_DB={value!r}: expected one of {', '.join(TEST_DATABASES)}")
    return value


def pytest_configure(config) -> None:
    labelstudio_test_database()  # a mistyped HABLA_LS_TEST_DB stops the run before any test


def pytest_report_header(config) -> str:
    return f"Label Studio test database: {labelstudio_test_database()} (HABLA_LS_TEST_DB)"


@pytest.fixture(scope="session")
def postgres_cluster() -> PostgresCluster:
    """A throw-away PostgreSQL for the session, started on first use; skips where PostgreSQL is not installed,
    unless the run asked for it (HABLA_LS_TEST_DB=postgresql), where that is a failure."""
    try:
        find_bin_dir()
    except PostgresError as exc:
        if labelstudio_test_database() == "postgresql":
            pytest.fail(f"HABLA_LS_TEST_DB=postgresql: {exc}")
        pytest.skip(str(exc))
    cluster = start_throwaway_postgres(durable=False)
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def ls_postgres(request) -> PostgresCluster | None:
    """The PostgreSQL the Label Studio test servers use, or None on SQLite."""
    return request.getfixturevalue("postgres_cluster") if labelstudio_test_database() == "postgresql" else None


@pytest.fixture
def ls_database_url(ls_postgres) -> str | None:
    """For a test that starts its own server: a fresh migrated database's URL on PostgreSQL, None on SQLite
    (then the server's data dir must be a copy of the template: ``copy_template``)."""
    return ls_postgres.new_database() if ls_postgres is not None else None


@pytest.fixture(scope="session")
def ls_document_root(tmp_path_factory) -> Path:
    """The session's temporary root: every test's ``tmp_path``, and so its HABLA_LS_HOME, lies below it,
    where Label Studio's local-files storage can serve it."""
    return tmp_path_factory.getbasetemp()


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory, ls_document_root, ls_postgres) -> LabelStudioServer:
    database_url = ls_postgres.new_database() if ls_postgres is not None else None
    server = start_test_server(
        tmp_path_factory.mktemp("label-studio"), document_root=ls_document_root, database_url=database_url
    )
    yield server
    server.stop()


@pytest.fixture
def ls_home(tmp_path) -> Path:
    """A fresh HABLA_LS_HOME in the test's ``tmp_path`` (below the served document root), removed with it
    when the test passes (``tmp_path_retention_policy`` in pyproject.toml)."""
    home = tmp_path / "home"
    home.mkdir()
    return home


@pytest.fixture
def ls_client(label_studio):
    """habla-ls' own Label Studio client (label-studio-sdk underneath), for asserting on the server's state."""
    from sync.ls_client import LabelStudioClient

    with LabelStudioClient(label_studio.url, label_studio.token) as client:
        yield client


@pytest.fixture
def unique_project_title(request) -> str:
    return f"t {request.node.name[5:38]} {next(_project_counter)}"


@pytest.fixture
def ls_settings(label_studio, ls_home, ls_document_root, unique_project_title):
    """habla-ls Settings pointing at the test server, a fresh home and a fresh project title."""
    from habla_ls.config import load_settings

    return load_settings(
        environ={},
        label_studio_url=label_studio.url,
        label_studio_api_key=label_studio.token,
        home=str(ls_home),
        label_studio_document_root=str(ls_document_root),
        project_title=unique_project_title,
    )


@pytest.fixture
def ls_cli_env(ls_settings) -> dict[str, str]:
    """Environment for running `habla-ls` in a subprocess against the test server (token via env only)."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LABEL_STUDIO_", "HABLA_"))}
    env.update(
        {
            "LABEL_STUDIO_URL": ls_settings.label_studio_url,
            "LABEL_STUDIO_API_KEY": ls_settings.label_studio_api_key,
            "HABLA_LS_HOME": str(ls_settings.home),
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(ls_settings.document_root),
            "HABLA_LS_PROJECT": ls_settings.project_title,
        }
    )
    return env
