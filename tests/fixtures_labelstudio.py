"""A real Label Studio 1.23.2 on 127.0.0.1 for the whole test session (~3 s from a cached template)."""

from __future__ import annotations

import itertools
from pathlib import Path

import httpx
import pytest

from sync.ls_server import LabelStudioServer, start_test_server

_project_counter = itertools.count(1)


@pytest.fixture(scope="session")
def ls_document_root(tmp_path_factory) -> Path:
    """Every test's HABLA_LS_HOME lives below this dir, so Label Studio's local-files storage can serve it."""
    return tmp_path_factory.mktemp("ls-docroot")


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory, ls_document_root) -> LabelStudioServer:
    server = start_test_server(tmp_path_factory.mktemp("label-studio"), document_root=ls_document_root)
    yield server
    server.stop()


@pytest.fixture
def ls_home(ls_document_root, request) -> Path:
    """A fresh HABLA_LS_HOME under the served document root."""
    home = ls_document_root / f"home-{request.node.name[:40]}-{next(_project_counter)}"
    home.mkdir(parents=True)
    return home


@pytest.fixture
def ls_http(label_studio) -> httpx.Client:
    """A raw authenticated HTTP client for asserting on Label Studio's state directly."""
    with httpx.Client(
        base_url=label_studio.url, headers={"Authorization": f"Token {label_studio.token}"}, timeout=60
    ) as client:
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
