"""The audio of a Label Studio task: from the archive by sha256 first, else downloaded from Label Studio
(and only from Label Studio's host)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx
import numpy as np

from ml_backend.audio import AudioError, load_checked
from ml_backend.config import BackendConfig

AUDIO_KEYS = ("audio", "url", "wav")
DOWNLOAD_TIMEOUT = 30.0


class TaskAudioError(ValueError):
    """This task's audio cannot be used; ``str()`` is the one-line reason."""


class AudioFetcher:
    """Audio bytes for a task: the archive by sha256 first, else Label Studio (and only Label Studio)."""

    def __init__(self, config: BackendConfig):
        self.config = config
        allowed = urlsplit(config.label_studio_url)
        self._allowed = (allowed.scheme, allowed.hostname, allowed.port or (443 if allowed.scheme == "https" else 80))
        self._client = httpx.Client(timeout=DOWNLOAD_TIMEOUT, follow_redirects=False)

    def archive_path(self, sha256: str) -> Path:
        return self.config.archive_dir / sha256[:2] / f"{sha256}.wav"

    def known_sha(self, task: dict[str, Any]) -> str | None:
        """The task's ``data.sha256`` when it is a well-formed digest (push writes it)."""
        sha = str((task.get("data") or {}).get("sha256") or "")
        return sha if re.fullmatch(r"[0-9a-f]{64}", sha) else None

    def source(self, task: dict[str, Any]) -> tuple[str, Path | bytes, str]:
        """(sha256 of the audio bytes, the archived file or the downloaded bytes, a label for messages)."""
        data = task.get("data") or {}
        sha = self.known_sha(task)
        if sha is not None:
            path = self.archive_path(sha)
            if path.is_file():
                return sha, path, path.name
        url = next((data[k] for k in AUDIO_KEYS if isinstance(data.get(k), str) and data[k]), None)
        if url is None:
            raise TaskAudioError("no audio: task data has neither a known sha256 nor an audio URL")
        content = self._download(url)
        return hashlib.sha256(content).hexdigest(), content, url

    def clip(self, task: dict[str, Any]) -> np.ndarray:
        _sha, source, label = self.source(task)
        return self.decode(source, label)

    def decode(self, source: Path | bytes, label: str) -> np.ndarray:
        try:
            return load_checked(source)
        except AudioError as exc:
            raise TaskAudioError(f"{label}: {exc}") from exc

    def _download(self, url: str) -> bytes:
        absolute = urljoin(self.config.label_studio_url + "/", url)
        parts = urlsplit(absolute)
        where = (parts.scheme, parts.hostname, parts.port or (443 if parts.scheme == "https" else 80))
        if where != self._allowed:
            raise TaskAudioError(f"refusing audio URL on {parts.hostname}:{where[2]}: only the Label Studio host is allowed")
        headers = {"Authorization": f"Token {self.config.label_studio_api_key}"} if self.config.label_studio_api_key else {}
        try:
            response = self._client.get(absolute, headers=headers)
        except httpx.HTTPError as exc:
            raise TaskAudioError(f"{url}: download failed ({type(exc).__name__})") from exc
        if response.status_code != 200:
            raise TaskAudioError(f"{url}: Label Studio answered HTTP {response.status_code}")
        return response.content

