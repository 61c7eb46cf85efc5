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
    return f"test {request.node.name[:60]} {next(_project_counter)}"
