"""Settings for every habla-ls command.

Precedence, lowest first: built-in defaults, a ``habla-ls.toml`` file, the environment, command-line
flags. The Label Studio token is a secret: it is never part of a ``repr`` and never logged.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from sync.places import LabelStudioProject, WorkPaths

CONFIG_FILE_ENV = "HABLA_LS_CONFIG"
DEFAULT_CONFIG_FILE = "habla-ls.toml"

# environment variable -> settings field
ENV_VARS = {
    "LABEL_STUDIO_URL": "label_studio_url",
    "LABEL_STUDIO_API_KEY": "label_studio_api_key",
    "HABLA_LS_HOME": "home",
    "HABLA_RECORDINGS": "recordings",
    "HABLA_LS_PROJECT": "project_title",
    "HABLA_LS_LANGUAGE": "language",
    # The same variable Label Studio reads: the dir it may serve audio from (`/data/local-files/?d=...`).
    "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": "label_studio_document_root",
    "HABLA_LS_REGRESSION_MANIFEST": "regression_manifest",
    "HABLA_LS_HABLA_MODEL_DIR": "habla_model_dir",
    "HABLA_LS_HABLA_ENV_FILE": "habla_env_file",
    "HABLA_LS_HABLA_PATH": "habla_model_path",
    "HABLA_LS_WATCH_INTERVAL": "watch_interval",
    "HABLA_LS_WATCH_MIN_CORRECTIONS": "watch_min_corrections",
    "HABLA_LS_WATCH_MIN_MINUTES": "watch_min_minutes",
    "HABLA_LS_ROUND_STRATEGY": "round_strategy",
}
# How `round` and `watch` order the tasks (sync.active_learning.STRATEGIES).
ROUND_STRATEGIES = ("uncertainty", "diverse", "random")


class ConfigError(ValueError):
    """A setting is missing or malformed; the message says which and where."""


@dataclass(frozen=True)
class Settings:
    label_studio_url: str = "http://127.0.0.1:8080"
    label_studio_api_key: str | None = field(default=None, repr=False)
    home: Path = Path("habla-ls-data")
    recordings: Path | None = None
    project_title: str = "Habla classroom transcripts"
    language: str = "es"
    # Label Studio serves local audio only from below its LOCAL_FILES_DOCUMENT_ROOT; the archive must lie
    # below it. Unset: the work dir itself is the root (what `habla-ls labelstudio up` configures).
    label_studio_document_root: Path | None = None
    # A standard-Spanish manifest that replaces the generated regression set (recordings of other
    # speakers, a public corpus): the gate judges "does not forget everyday Spanish" on it.
    regression_manifest: Path | None = None
    # Where promoted versions are delivered for Habla (`models export --habla-dir`, `watch`); unset: no
    # delivery.
    habla_model_dir: Path | None = None
    # Habla's own `.env` (its WHISPER_MODEL line is rewritten on delivery), and habla_model_dir as Habla
    # sees it (another mount point in its container); unset: only <habla_model_dir>/whisper_model.env,
    # and the same path.
    habla_env_file: Path | None = None
    habla_model_path: str | None = None
    # `habla-ls watch`: seconds between passes, and the human corrections since the last training that
    # start the finish (pull, train, evaluate, gate, promote, export). Either threshold suffices; 0 disables
    # the minutes threshold.
    watch_interval: float = 60.0
    watch_min_corrections: int = 20
    watch_min_minutes: float = 0.0
    # Which tasks `round` (and `watch`) put first: sync.active_learning's strategies. `diverse` since
    # bench/term's two seeds: it kept held-out standard Spanish where `uncertainty` lost it (bench/README.md).
    round_strategy: str = "diverse"

    @property
    def document_root(self) -> Path:
        return (self.label_studio_document_root or self.home).expanduser().resolve()

    @property
    def archive_dir(self) -> Path:
        return self.home / "archive"

    @property
    def ledger_path(self) -> Path:
        return self.home / "ledger.sqlite3"

    @property
    def datasets_dir(self) -> Path:
        return self.home / "datasets"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def reports_dir(self) -> Path:
        return self.home / "reports"

    def require_api_key(self) -> str:
        if not self.label_studio_api_key:
            raise ConfigError(
                "no Label Studio token: set LABEL_STUDIO_API_KEY, or label_studio_api_key in habla-ls.toml "
                "(`habla-ls labelstudio up` prints one for its local server)"
            )
        return self.label_studio_api_key

    def label_studio_project(self, *, need_token: bool = True) -> LabelStudioProject:
        """The Label Studio project sync talks to. Raises ``ConfigError`` without a token, unless
        ``need_token`` is False (for what reads only the ledger: a dry run)."""
        return LabelStudioProject(
            url=self.label_studio_url,
            title=self.project_title,
            document_root=self.document_root,
            token=self.require_api_key() if need_token else self.label_studio_api_key,
        )

    def work_paths(self) -> WorkPaths:
        """The work dir's files sync keeps: the archive, the ledger, the datasets."""
        return WorkPaths(archive_dir=self.archive_dir, ledger_path=self.ledger_path, datasets_dir=self.datasets_dir)


_NUMBERS: dict[str, type] = {"watch_interval": float, "watch_min_corrections": int, "watch_min_minutes": float}


def _coerce(name: str, value: Any) -> Any:
    if name in ("home", "recordings", "label_studio_document_root", "regression_manifest", "habla_model_dir",
                "habla_env_file"):
        return None if value in (None, "") else Path(value).expanduser()
    if name in _NUMBERS:
        try:
            number = _NUMBERS[name](value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}: expected a number, got {value!r}") from None
        if number < 0:
            raise ConfigError(f"{name}: must not be negative, got {value!r}")
        return number
    if name == "label_studio_url":
        return str(value).rstrip("/")
    if name == "round_strategy" and value not in ROUND_STRATEGIES:
        raise ConfigError(f"round_strategy: one of {', '.join(ROUND_STRATEGIES)}, not {value!r}")
    return value


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc
    # Accept both a flat file and one with a [habla-ls] table.
    data = data.get("habla-ls", data)
    known = {f.name for f in fields(Settings)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return data


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: dict[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Build the settings; ``overrides`` with a value of ``None`` are ignored (an unset flag)."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}

    path = config_file or env.get(CONFIG_FILE_ENV)
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        values.update(_read_toml(path))
    elif Path(DEFAULT_CONFIG_FILE).is_file():
        values.update(_read_toml(Path(DEFAULT_CONFIG_FILE)))

    for var, name in ENV_VARS.items():
        if env.get(var):
            values[name] = env[var]
    values.update({k: v for k, v in overrides.items() if v is not None})
    return replace(Settings(), **{k: _coerce(k, v) for k, v in values.items()})
