"""The backend's configuration, all of it from the environment: :data:`ENV_VARS` documents each variable
and :meth:`BackendConfig.from_env` reads them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ml_backend.training_queue import DEFAULT_TRAIN_COMMAND

ENV_VARS: dict[str, str] = {
    "HABLA_LS_HOME": "work dir: archive/ (audio by sha256) and models/ (the registry); default ./habla-ls-data",
    "HABLA_LS_MODEL": "what to serve: a registry models/ dir (its CURRENT, hot-swapped), a version dir or a model dir; default $HABLA_LS_HOME/models",
    "LABEL_STUDIO_URL": "Label Studio's base URL; task audio is downloaded only from this host",
    "LABEL_STUDIO_API_KEY": "Label Studio token used to download task audio (secret: never logged)",
    "HABLA_LS_LANGUAGE": "language forced on Whisper (default es)",
    "HABLA_LS_DEVICE": "auto, cpu or cuda (default auto)",
    "HABLA_LS_COMPUTE_TYPE": "CTranslate2/torch compute type (default int8 on CPU, float16 on GPU)",
    "HABLA_LS_BEAM_SIZE": "beam size of the decoder (default 5)",
    "HABLA_LS_TEMPERATURES": "decoding temperatures, comma-separated: the first is tried, the rest are fallbacks (default 0,0.2,0.4,0.6,0.8,1.0)",
    "HABLA_LS_MAX_NEW_TOKENS": "cap on tokens per clip (default: Whisper's limit)",
    "HABLA_LS_PACK": "1/0: decode several short clips per 30-s window on faster-whisper (default 1)",
    "HABLA_LS_CPU_THREADS": "cores the engine uses (default: this process's CPU affinity, capped by a cgroup CPU quota)",
    "HABLA_LS_TRAIN_COMMAND": "command run by START_TRAINING and /train (default `habla-ls finish`, with this Python)",
    "BASIC_AUTH_USER": "if set with BASIC_AUTH_PASS, requests need this HTTP basic auth",
    "BASIC_AUTH_PASS": "password for BASIC_AUTH_USER (secret)",
    "BACKEND_BEARER_TOKEN": "if set, requests may authenticate with `Authorization: Bearer <token>` (secret)",
    "PORT": "port of `habla-ls backend serve` (default 9090)",
    "WORKERS": "worker processes of `habla-ls backend serve` (default 1; each serves with threads)",
    "THREADS": "request threads per worker (default 4)",
}


@dataclass(frozen=True)
class BackendConfig:
    home: Path = Path("habla-ls-data")
    model: Path | None = None
    label_studio_url: str = "http://127.0.0.1:8080"
    label_studio_api_key: str | None = field(default=None, repr=False)
    language: str = "es"
    device: str = "auto"
    compute_type: str | None = None
    beam_size: int = 5
    temperatures: tuple[float, ...] = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
    max_new_tokens: int | None = None
    pack: bool = True
    train_command: str = DEFAULT_TRAIN_COMMAND
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = field(default=None, repr=False)
    bearer_token: str | None = field(default=None, repr=False)

    @property
    def model_source(self) -> Path:
        return self.model or self.home / "models"

    @property
    def archive_dir(self) -> Path:
        return self.home / "archive"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> BackendConfig:
        env = os.environ if environ is None else environ
        home = Path(env.get("HABLA_LS_HOME") or "habla-ls-data").expanduser()
        return cls(
            home=home,
            model=Path(env["HABLA_LS_MODEL"]).expanduser() if env.get("HABLA_LS_MODEL") else None,
            label_studio_url=(env.get("LABEL_STUDIO_URL") or cls.label_studio_url).rstrip("/"),
            label_studio_api_key=env.get("LABEL_STUDIO_API_KEY") or None,
            language=env.get("HABLA_LS_LANGUAGE") or "es",
            device=env.get("HABLA_LS_DEVICE") or "auto",
            compute_type=env.get("HABLA_LS_COMPUTE_TYPE") or None,
            beam_size=int(env.get("HABLA_LS_BEAM_SIZE") or 5),
            temperatures=tuple(float(t) for t in env["HABLA_LS_TEMPERATURES"].split(","))
            if env.get("HABLA_LS_TEMPERATURES")
            else cls.temperatures,
            max_new_tokens=int(env["HABLA_LS_MAX_NEW_TOKENS"]) if env.get("HABLA_LS_MAX_NEW_TOKENS") else None,
            pack=(env.get("HABLA_LS_PACK") or "1").lower() not in ("0", "false", "no"),
            train_command=env.get("HABLA_LS_TRAIN_COMMAND") or DEFAULT_TRAIN_COMMAND,
            basic_auth_user=env.get("BASIC_AUTH_USER") or None,
            basic_auth_pass=env.get("BASIC_AUTH_PASS") or None,
            bearer_token=env.get("BACKEND_BEARER_TOKEN") or None,
        )
