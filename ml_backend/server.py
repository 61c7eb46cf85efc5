"""The Label Studio ML backend: Label Studio 1.23's HTTP contract on FastAPI; the work is
:class:`~ml_backend.backend.Backend`'s.

- ``GET /health`` and ``POST /setup`` report the served ``model_version`` (the registry version).
- ``POST /predict`` answers one entry per task, in order, decoding each distinct clip at most once
  (:mod:`ml_backend.backend`). ``/health`` counts how tasks were answered (``predictions.decoded_clips``
  is the engine's real work).
- ``POST /webhook``: annotation events are counted; ``START_TRAINING`` (and ``POST /train``) queues the
  finish in the background (:mod:`ml_backend.training_queue`).
- Optional basic or bearer auth. Tokens are never logged or echoed.

All configuration comes from the environment (:data:`ml_backend.config.ENV_VARS`); :func:`create_app`
builds the app.
"""

from __future__ import annotations

import base64
import os
import secrets
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse

from ml_backend.backend import Backend
from ml_backend.config import BackendConfig
from ml_backend.engine import EngineError
from ml_backend.registry import RegistryError


def _auth_dependency(config: BackendConfig):
    def check(request: Request) -> None:
        if not (config.bearer_token or (config.basic_auth_user and config.basic_auth_pass)):
            return
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if config.bearer_token and scheme.lower() == "bearer" and secrets.compare_digest(value.strip(), config.bearer_token):
            return
        if config.basic_auth_user and config.basic_auth_pass and scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(value.strip()).decode("utf-8").partition(":")
            except (ValueError, UnicodeDecodeError):
                user, password = "", ""
            if secrets.compare_digest(user, config.basic_auth_user) and secrets.compare_digest(password, config.basic_auth_pass):
                return
        raise HTTPException(status_code=401, detail="authentication required", headers={"WWW-Authenticate": "Basic"})

    return check


def create_app(config: BackendConfig | None = None) -> FastAPI:
    config = config or BackendConfig.from_env()
    backend = Backend(config)
    app = FastAPI(title="habla-ls ML backend")
    app.state.backend = backend

    @app.on_event("startup")
    def size_thread_pool() -> None:
        import anyio.to_thread

        anyio.to_thread.current_default_thread_limiter().total_tokens = int(os.environ.get("THREADS") or 4)
    auth = Depends(_auth_dependency(config))

    @app.exception_handler(EngineError)
    @app.exception_handler(RegistryError)
    async def no_model(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=503, content={"status": "ERROR", "error": str(exc)})

    # Plain `def` endpoints run in FastAPI's thread pool: concurrent requests do not block each other.
    @app.get("/health")
    @app.get("/")
    def health() -> dict[str, Any]:
        try:
            version = backend.served_version()
            status = "UP"
        except (EngineError, RegistryError) as exc:
            version, status = None, f"NO MODEL: {exc}"
        return {
            "status": status,
            "model_class": "HablaWhisper",
            "model_version": version,
            "annotation_events": backend.annotation_events(),
            "predictions": backend.prediction_counts(),
            "events": dict(backend.events),
            "training": backend.training.snapshot(),
        }

    @app.post("/setup", dependencies=[auth])
    def setup() -> dict[str, Any]:
        return {"model_version": backend.served_version()}

    @app.post("/validate", dependencies=[auth])
    def validate() -> dict[str, Any]:
        return {"status": "ok"}

    @app.post("/predict", dependencies=[auth])
    def predict(payload: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(payload.get("tasks", []), list):
            raise HTTPException(status_code=422, detail="tasks must be a list")
        return backend.predict(payload)

    @app.post("/webhook", dependencies=[auth])
    def webhook(payload: dict[str, Any]) -> dict[str, Any]:
        return backend.webhook(payload)

    @app.post("/train", dependencies=[auth])
    def train() -> dict[str, Any]:
        return backend.webhook({"action": "START_TRAINING"})

    return app


def app_factory() -> FastAPI:
    """For ``uvicorn --factory ml_backend.server:app_factory`` (configuration from the environment)."""
    return create_app()
