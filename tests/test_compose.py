"""docker-compose.yml and ml_backend/Dockerfile agree with what the code reads.

No Docker engine runs here, so the compose file is parsed and checked against the code itself: the
commands parse with the real click commands, every environment variable is one the code reads, the
Label Studio settings are the ones our own test server needs, and the paths line up between services.
"""

from __future__ import annotations

import os
import re
import shlex
from pathlib import Path, PurePosixPath
from typing import Any

import click
import pytest

yaml = pytest.importorskip("yaml")

from habla_ls.cli import cli  # noqa: E402
from habla_ls.config import ENV_VARS as SETTINGS_ENV_VARS  # noqa: E402
from ml_backend.config import ENV_VARS as BACKEND_ENV_VARS  # noqa: E402
from sync.ls_server import Credentials, server_environment  # noqa: E402
from sync.postgres import PostgresDsn  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_TEXT = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
DOCKERFILE_TEXT = (ROOT / "ml_backend" / "Dockerfile").read_text(encoding="utf-8")
# Read by the libraries underneath (huggingface_hub, transformers), not by our code: allowed too.
LIBRARY_ENV_VARS = {"HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"}
HABLA_SERVICES = ("ml-backend", "habla-ls", "trainer", "watch")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_TEXT)


def services(compose: dict[str, Any]) -> dict[str, Any]:
    return compose["services"]


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> dict[str, tuple[str, str]]:
    """container path -> (source, mode) for the service's volumes (short syntax)."""
    out = {}
    for spec in service.get("volumes", []):
        # a source may be an interpolation containing ':' (${VAR:?msg}); split from the right
        parts = spec.rsplit(":", 2) if spec.endswith((":ro", ":rw")) else spec.rsplit(":", 1)
        source, target, mode = (parts + ["rw"])[:3]
        out[target] = (source, mode)
    return out


def resolve(argv: list[str]) -> tuple[click.Command, list[str]]:
    """Walk the real habla-ls click groups down to the command ``argv`` names."""
    assert argv[0] == "habla-ls"
    command: click.Command = cli
    args = argv[1:]
    ctx = click.Context(cli)
    while isinstance(command, click.Group) and args and not args[0].startswith("-"):
        name, args = args[0], args[1:]
        sub = command.get_command(ctx, name)
        assert sub is not None, f"habla-ls has no command {name!r}"
        command = sub
    return command, args


def parse_with_click(argv: list[str]) -> dict[str, Any]:
    command, args = resolve(argv)
    # make_context parses and validates options without running the command
    with command.make_context(command.name, list(args)) as ctx:
        return dict(ctx.params)


def default_of(value: str) -> str:
    """The value a ``${VAR:-default}`` interpolation takes when VAR is unset."""
    match = re.fullmatch(r"\$\{\w+:-([^}]*)\}", value)
    return match.group(1) if match else value


def test_every_variable_the_file_interpolates_is_documented_in_its_header() -> None:
    header = COMPOSE_TEXT.split("\nx-", 1)[0]
    used = set(re.findall(r"\$\{(\w+)", COMPOSE_TEXT))
    assert used, "expected environment-only configuration via ${...}"
    undocumented = sorted(name for name in used if not re.search(rf"^#\s+.*\b{name}\b", header, re.MULTILINE))
    assert not undocumented, f"variables used but not documented in the header: {undocumented}"


def test_habla_services_set_only_variables_the_code_reads(compose: dict[str, Any]) -> None:
    known = set(SETTINGS_ENV_VARS) | set(BACKEND_ENV_VARS) | LIBRARY_ENV_VARS
    for name in HABLA_SERVICES:
        unknown = sorted(set(env_of(services(compose)[name])) - known)
        assert not unknown, f"{name}: environment variables no code reads: {unknown}"


def test_backend_serves_on_its_port_with_a_command_the_cli_accepts(compose: dict[str, Any]) -> None:
    backend = services(compose)["ml-backend"]
    env = env_of(backend)
    for needed in ("HABLA_LS_HOME", "LABEL_STUDIO_URL", "LABEL_STUDIO_API_KEY", "PORT"):
        assert env.get(needed), f"ml-backend: {needed} not set"
    params = parse_with_click(list(backend["command"]))
    # the container must listen on all interfaces, on the port it publishes and its healthcheck probes
    assert params["host"] == "0.0.0.0"
    port = int(env["PORT"])
    published = [str(p).rsplit(":", 1)[-1] for p in backend["ports"]]
    assert published == [str(port)]
    assert f"127.0.0.1:{port}/health" in " ".join(backend["healthcheck"]["test"])
    assert int(default_of(env["WORKERS"])) >= 1
    # the backend reaches Label Studio by its service name and port
    ls_port = int(str(services(compose)["label-studio"]["ports"][0]).rsplit(":", 1)[-1])
    assert env["LABEL_STUDIO_URL"] == f"http://label-studio:{ls_port}"


def test_backend_has_the_volumes_it_reads(compose: dict[str, Any]) -> None:
    backend = services(compose)["ml-backend"]
    env = env_of(backend)
    home = PurePosixPath(env["HABLA_LS_HOME"])
    volumes = mounts(backend)
    declared = set(compose["volumes"])
    # work dir, archive (task audio by sha256) and the model registry, each a named volume
    for path in (home, home / "archive", home / "models"):
        assert str(path) in volumes, f"ml-backend: nothing mounted at {path}"
        assert volumes[str(path)][0] in declared, f"ml-backend: {path} is not a named volume"
    assert PurePosixPath(env["HABLA_LS_MODEL"]) == home / "models"


def test_every_named_volume_is_declared_and_used(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    used = set()
    for name, service in services(compose).items():
        for source, _mode in mounts(service).values():
            # ${VAR:-name}: a bind mount when VAR is set, else the named volume `name`
            default = re.fullmatch(r"\$\{\w+:-([^}]*)\}", source)
            source = default.group(1) if default else source
            if not source.startswith(("/", ".", "$")):
                assert source in declared, f"{name}: volume {source} is not declared"
                used.add(source)
    assert used == declared


def test_recordings_are_mounted_read_only_where_they_are_read(compose: dict[str, Any]) -> None:
    for name in ("habla-ls", "trainer"):
        service = services(compose)[name]
        recordings = env_of(service)["HABLA_RECORDINGS"]
        source, mode = mounts(service)[recordings]
        assert "HABLA_RECORDINGS" in source and mode == "ro", f"{name}: recordings must be a read-only bind mount"
    assert "/recordings" not in mounts(services(compose)["ml-backend"])  # the backend never reads Habla's files


def test_label_studio_gets_the_settings_our_own_server_uses(compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        monkeypatch.delenv(key)
    database = PostgresDsn("user", "secret", "db-host", 5432, "db")
    expected = server_environment(PurePosixPath("/d"), Credentials("u@x", "p", "t" * 40), PurePosixPath("/root"), database)
    assert expected["DJANGO_DB"] == "postgresql"
    ls = services(compose)["label-studio"]
    assert ls["image"] == "heartexlabs/label-studio:1.23.2"
    from sync.ls_server import LABEL_STUDIO_VERSION

    assert ls["image"].endswith(":" + LABEL_STUDIO_VERSION)  # the version the tests run against
    env = env_of(ls)
    missing = sorted(set(expected) - set(env))
    assert not missing, f"label-studio: settings our test server needs are missing: {missing}"
    per_deployment = {
        "LABEL_STUDIO_BASE_DATA_DIR", "LABEL_STUDIO_USERNAME", "LABEL_STUDIO_PASSWORD", "LABEL_STUDIO_USER_TOKEN",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT", *(set(database.label_studio_env()) - {"DJANGO_DB"}),
    }
    for key, value in expected.items():
        if key not in per_deployment:
            assert env[key] == value, f"label-studio: {key}={env[key]!r}, our server uses {value!r}"
    # one token: the admin Label Studio creates is the one habla-ls authenticates as
    assert env["LABEL_STUDIO_USER_TOKEN"] == env_of(services(compose)["ml-backend"])["LABEL_STUDIO_API_KEY"]
    # its data dir is a named volume
    assert mounts(ls)[env["LABEL_STUDIO_BASE_DATA_DIR"]][0] in compose["volumes"]
    command = ls["command"]
    assert command[:3] == ["label-studio", "start", "--no-browser"]
    assert command[command.index("--internal-host") + 1] == "0.0.0.0"
    assert str(ls["ports"][0]).endswith(":" + command[command.index("--port") + 1])


def test_label_studio_serves_the_archive_at_the_path_habla_ls_writes(compose: dict[str, Any]) -> None:
    ls_env = env_of(services(compose)["label-studio"])
    root = PurePosixPath(ls_env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"])
    for name in HABLA_SERVICES:
        env = env_of(services(compose)[name])
        archive = PurePosixPath(env["HABLA_LS_HOME"]) / "archive"
        # push makes URLs relative to the document root it is told, so both must agree
        assert PurePosixPath(env["LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"]) == root
        assert archive.is_relative_to(root)
        assert mounts(services(compose)[name])[str(archive)][0] == "habla-archive"
    source, mode = mounts(services(compose)["label-studio"])[str(PurePosixPath(env_of(services(compose)["ml-backend"])["HABLA_LS_HOME"]) / "archive")]
    assert source == "habla-archive" and mode == "ro"


def test_cli_and_trainer_commands_parse(compose: dict[str, Any]) -> None:
    for name in ("habla-ls", "trainer"):
        service = services(compose)[name]
        assert service["entrypoint"] == ["habla-ls"]
        assert service["profiles"], f"{name} should only start on demand (a profile)"
        if service["command"] != ["--help"]:
            parse_with_click(["habla-ls", *service["command"]])
    trainer = services(compose)["trainer"]
    assert trainer["profiles"] == ["gpu"]
    devices = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"]
    assert trainer["build"]["args"]["TORCH_VARIANT"] == "cuda"
    # every example command in the header uses a real command
    examples = re.findall(r"^#\s+docker compose run --rm habla-ls (.+?)(?:\s{2,}#.*)?$", COMPOSE_TEXT, re.MULTILINE)
    assert len(examples) >= 5
    for line in examples:
        parse_with_click(["habla-ls", *shlex.split(line)])


def test_watch_runs_the_loop_and_delivers_where_habla_loads(compose: dict[str, Any]) -> None:
    watch = services(compose)["watch"]
    assert "profiles" not in watch, "the loop starts with `docker compose up`"
    parse_with_click(watch["command"])
    assert watch["command"][:2] == ["habla-ls", "watch"]
    env = env_of(watch)
    delivery = env["HABLA_LS_HABLA_MODEL_DIR"]
    source, mode = mounts(watch)[delivery]
    assert mode == "rw" and "HABLA_MODEL_DIR" in source
    assert mounts(watch)[env["HABLA_RECORDINGS"]][1] == "ro"
    # SIGTERM finishes the current step: the grace period must outlast a pull or a push
    assert watch["stop_grace_period"] in ("2m", "120s")
    assert watch["restart"] == "unless-stopped"


def test_dockerfile_builds_the_backend_image_the_compose_file_expects(compose: dict[str, Any]) -> None:
    backend = services(compose)["ml-backend"]
    assert backend["build"]["dockerfile"] == "ml_backend/Dockerfile" and backend["build"]["context"] == "."
    assert re.search(r"^FROM python:3\.11-slim\b", DOCKERFILE_TEXT, re.MULTILINE)
    assert re.search(r"^ARG TORCH_VERSION=2\.13\.0$", DOCKERFILE_TEXT, re.MULTILINE)
    assert "ARG TORCH_VARIANT=cpu" in DOCKERFILE_TEXT
    # the CMD is the compose command, and parses with the real CLI
    cmd = re.search(r"^CMD (\[.*\])$", DOCKERFILE_TEXT, re.MULTILINE).group(1)
    assert yaml.safe_load(cmd) == backend["command"]
    # every package pyproject.toml installs is copied in, and the files pip needs to build them
    import tomllib

    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]["include"]
    assert "synth*" in packages
    for path in (*(p.rstrip("*") for p in packages), "pyproject.toml"):
        assert re.search(rf"^COPY .*\b{re.escape(path)}\b", DOCKERFILE_TEXT, re.MULTILINE), f"Dockerfile does not copy {path}"
    env_line = re.search(r"^ENV ((?:.*\\\n)*.*)$", DOCKERFILE_TEXT, re.MULTILINE).group(1)
    env = dict(re.findall(r"(\w+)=(\S+)", env_line))
    assert env["HABLA_LS_HOME"] == env_of(backend)["HABLA_LS_HOME"]
    assert env["PORT"] == env_of(backend)["PORT"]
    assert set(env) - {"PYTHONUNBUFFERED", "PIP_NO_CACHE_DIR", "PIP_DISABLE_PIP_VERSION_CHECK"} <= (
        set(BACKEND_ENV_VARS) | set(SETTINGS_ENV_VARS) | LIBRARY_ENV_VARS
    )


def test_label_studio_keeps_its_database_in_the_postgres_service(compose: dict[str, Any]) -> None:
    postgres = services(compose)["postgres"]
    ls = services(compose)["label-studio"]
    # the official image, at the major version the tests run Label Studio on (Debian 12's postgresql)
    assert postgres["image"] == "postgres:15"
    db_env, ls_env = env_of(postgres), env_of(ls)
    # Label Studio's own settings (it reads no database URL) point at the service, user and database
    assert ls_env["DJANGO_DB"] == "postgresql"
    assert ls_env["POSTGRE_HOST"] == "postgres" and ls_env["POSTGRE_PORT"] == "5432"
    assert ls_env["POSTGRE_USER"] == db_env["POSTGRES_USER"] and ls_env["POSTGRE_NAME"] == db_env["POSTGRES_DB"]
    # one password, from the environment, required: never a default written in the file
    assert ls_env["POSTGRE_PASSWORD"] == db_env["POSTGRES_PASSWORD"]
    assert re.fullmatch(r"\$\{POSTGRES_PASSWORD:\?[^}]+\}", db_env["POSTGRES_PASSWORD"])
    # the data outlives the container, in a named volume at the image's PGDATA
    source, mode = mounts(postgres)["/var/lib/postgresql/data"]
    assert source in compose["volumes"] and mode == "rw"
    # Label Studio waits until PostgreSQL accepts connections over the network as that user
    assert ls["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    check = postgres["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"]
    args = check[2:]
    assert args[args.index("-U") + 1] == db_env["POSTGRES_USER"] and args[args.index("-d") + 1] == db_env["POSTGRES_DB"]
    assert args[args.index("-h") + 1] == "127.0.0.1"  # TCP: the image's init-time server listens on no port
    assert "ports" not in postgres  # only Label Studio reaches it, inside the Compose network
    # the settings Label Studio is given reach a server: the compose values parse as a database URL
    dsn = PostgresDsn.parse(
        f"postgresql://{ls_env['POSTGRE_USER']}:x@{ls_env['POSTGRE_HOST']}:{ls_env['POSTGRE_PORT']}/{ls_env['POSTGRE_NAME']}"
    )
    assert {k: v for k, v in dsn.label_studio_env().items() if k != "POSTGRE_PASSWORD"} == {
        k: ls_env[k] for k in dsn.label_studio_env() if k != "POSTGRE_PASSWORD"
    }


def test_no_secret_is_written_in_the_file(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        for key, value in env_of(service).items():
            if re.search(r"(PASSWORD|_PASS|TOKEN|API_KEY|SECRET)$", key) and value not in ("true", "false"):
                assert value == "" or value.startswith("${"), f"{name}: {key} has a value written in the file"
                assert ":-" not in value or value.endswith(":-}"), f"{name}: {key} has a default written in the file"
