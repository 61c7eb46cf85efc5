"""The connection under :class:`sync.ls_client.LabelStudioClient`: label-studio-sdk's client, one request.

One SDK client holds what every request needs: the base URL, the token (a legacy token, or a personal
access token: the SDK trades that JWT refresh token for short-lived access tokens by itself), the
timeouts and the retry policy. Two ways through it:

- an endpoint the SDK has a method for is called through that method (``with_raw_response``: the JSON
  as Label Studio sent it, so callers get plain dicts, timestamps as strings);
- the bulk paths, the project lookup every push and pull starts with, and what the SDK has no method
  for go through the SDK's own HTTP client (its client wrapper's): the Data Manager task listings, the
  task and prediction imports (bodies serialised once with :mod:`json`: the SDK's encoder and its models
  cost ~70 ms per 1,000 tasks each way), the project listing (the typed projects client imports ~70 ms
  of models) and local audio files. Same headers, base URL, timeouts and retries.

The client is :class:`label_studio_sdk.base_client.LabelStudioBase`, the SDK's generated client:
``LabelStudio`` adds helpers whose imports (pandas, jsf) cost ~1 s and ~130 MB in every command.

Errors are :class:`sync.ls_errors.LabelStudioError` with one line naming the server, what was being done
(the project or task included) and the reason, never the token. Retries follow the SDK's policy
(connection refused or dropped, HTTP 5xx/408/409/429) only for requests that can be repeated; a request
that creates something (an import above all) is sent once: after a dropped connection it may have
happened, and a retry would duplicate tasks. ``sync push`` recovers by looking tasks up by ``ext_id``
instead. Label Studio's SQLite backend locks under parallel writes, so writes come from one thread; reads
may overlap from a second one (httpx's client can be shared between threads and the SDK refreshes a token
under a lock): ``sync pull`` counts and lists changed tasks while it parses a snapshot.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Self

import httpx

from sync.ls_errors import LabelStudioAuthError, LabelStudioError, LabelStudioUnreachable
from sync.ls_times import response_time

if TYPE_CHECKING:
    from label_studio_sdk.core.request_options import RequestOptions

CONNECT_TIMEOUT = 10.0
# Requests that create something are sent once (see the module docstring).
SEND_ONCE: RequestOptions = {"max_retries": 0}
JSON_HEADERS = {"Content-Type": "application/json"}
TOKEN_HINT = (
    "check LABEL_STUDIO_API_KEY (a legacy token, which needs LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true on the "
    "server, or a personal access token from Account & Settings)"
)


class LabelStudioTransport:
    """One authenticated connection to a Label Studio server: requests, their errors, the server's clock."""

    def __init__(self, url: str, token: str, *, timeout: float = 300.0, retries: int = 2):
        # Imported here: the SDK (pydantic, jwt) costs ~0.1 s, paid only by commands that talk to Label Studio.
        from label_studio_sdk.base_client import LabelStudioBase
        from label_studio_sdk.core.api_error import ApiError
        from label_studio_sdk.core.parse_error import ParsingError

        self._sdk_errors = (ApiError, ParsingError)
        self.url = url.rstrip("/")
        http = httpx.Client(timeout=httpx.Timeout(timeout, connect=CONNECT_TIMEOUT))
        try:
            # timeout=None: the httpx client's own (long reads, short connects) applies to every request.
            self._sdk = LabelStudioBase(base_url=self.url, api_key=token, httpx_client=http, max_retries=retries)
        except ApiError as exc:  # the SDK refuses an expired personal access token before any request
            http.close()
            raise LabelStudioAuthError(
                f"Label Studio at {self.url}: the token was refused before any request ({_api_detail(exc.body)}): {TOKEN_HINT}"
            ) from None
        self._httpx = http
        self._http = self._sdk._client_wrapper.httpx_client  # the SDK's HTTP client: auth, base URL, retries
        self._answers = threading.local()  # per thread: the server's clock at its latest answer

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"

    @property
    def sdk(self) -> Any:
        """The label-studio-sdk client underneath, for calls habla-ls has no method for (its errors are
        the SDK's own, not :class:`LabelStudioError`)."""
        return self._sdk

    def close(self) -> None:
        self._httpx.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- transport -----------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        what: str | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        """One call through the SDK's HTTP client; the JSON answer (``None`` when empty).

        For endpoints the SDK has no method for. ``idempotent`` (default: GET, HEAD, PUT, DELETE) allows
        retries; ``what`` names the action in errors (default: method and path).
        """
        response = self.response(method, path, idempotent=idempotent, what=what, params=params, json=json, headers=headers)
        return self._json(response, what or f"{method} {path}")

    def response(
        self,
        method: str,
        path: str,
        *,
        idempotent: bool | None = None,
        what: str | None = None,
        params: dict[str, Any] | None = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Like :meth:`request`, the raw answer (status checked)."""
        idempotent = method in ("GET", "HEAD", "PUT", "DELETE") if idempotent is None else idempotent
        what = what or f"{method} {path}"
        content = None
        if json is not None:
            content = _dumps(json)
            headers = {**JSON_HEADERS, **(headers or {})}
        try:
            response = self._http.request(
                path.lstrip("/"),
                method=method,
                params=params,
                content=content,
                headers=headers,
                request_options=None if idempotent else SEND_ONCE,
            )
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        except self._sdk_errors as exc:  # raised by the SDK's token refresh
            raise self._refused(exc.status_code, _api_detail(exc.body), what) from None
        if response.status_code >= 400:
            raise self._refused(response.status_code, _error_detail(response), what)
        self._answers.time = response_time(response)
        return response

    def answered_at(self) -> datetime | None:
        """The server's clock (HTTP ``Date``) at the latest answer this thread had (downloads aside), or None."""
        return getattr(self._answers, "time", None)

    def _sdk_call(self, what: str, call: Callable[..., Any], *args: Any, create: bool = False, **kwargs: Any) -> Any:
        """Runs one SDK method (a ``with_raw_response`` one); the JSON Label Studio answered, or None.
        ``create``: the call makes something, so it is sent once."""
        try:
            answer = call(*args, request_options=SEND_ONCE if create else None, **kwargs)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        except self._sdk_errors as exc:
            status = exc.status_code
            if status is not None and status < 400:
                raise LabelStudioError(f"Label Studio at {self.url}: {what} answered non-JSON") from None
            raise self._refused(status, _api_detail(exc.body), what) from None
        self._answers.time = response_time(answer.response)
        return self._json(answer.response, what)

    def _unreachable(self, exc: httpx.TransportError) -> LabelStudioUnreachable:
        reason = type(exc).__name__ if not str(exc) else str(exc).splitlines()[0][:120]
        return LabelStudioUnreachable(f"Label Studio at {self.url} is unreachable ({reason})")

    def _refused(self, status: int | None, detail: str, what: str) -> LabelStudioError:
        if status == 401:
            return LabelStudioAuthError(f"Label Studio at {self.url} refused the token (HTTP 401) while {what}: {TOKEN_HINT}")
        if status == 403:
            return LabelStudioAuthError(f"Label Studio at {self.url}: {what} is forbidden for this token (HTTP 403)")
        return LabelStudioError(f"Label Studio at {self.url}: {what} failed with HTTP {status}: {detail}")

    def _json(self, response: httpx.Response, what: str) -> Any:
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise LabelStudioError(f"Label Studio at {self.url}: {what} answered non-JSON") from None

    def _tasks_page(self, what: str, params: dict[str, Any]) -> httpx.Response | None:
        """One Data Manager page (None past the last one, which Django REST answers with 404)."""
        try:
            return self.response("GET", "api/tasks/", params=params, what=what)
        except LabelStudioError as exc:
            if "HTTP 404" in str(exc) and params.get("page", 1) > 1:
                return None
            raise

    def _download(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """The JSON of an SDK download (a streamed answer), read whole."""
        return self._parse(self._download_body(what, call, *args, **kwargs), what)

    def _download_body(self, what: str, call: Callable[..., Any], *args: Any, **kwargs: Any) -> bytes:
        try:
            with call(*args, **kwargs) as answer:
                return b"".join(answer.data)
        except httpx.TransportError as exc:
            raise self._unreachable(exc) from None
        except self._sdk_errors as exc:
            raise self._refused(exc.status_code, _api_detail(exc.body), what) from None

    def _parse(self, body: bytes, what: str) -> Any:
        try:
            return json.loads(body) if body else None
        except ValueError:
            raise LabelStudioError(f"Label Studio at {self.url}: {what} answered non-JSON") from None

    def whoami(self) -> dict[str, Any]:
        """Checks that the server is reachable and accepts the token."""
        return self._sdk_call("checking the token", self._sdk.users.with_raw_response.whoami)

    def version(self) -> str:
        info = self._sdk_call("asking its version", self._sdk.versions.with_raw_response.get) or {}
        return str(info.get("release") or info.get("label-studio-os-package", {}).get("version", "unknown"))


def _dumps(body: Any) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def _api_detail(body: Any) -> str:
    """The reason in an error body (parsed JSON, or text) as one short line."""
    if isinstance(body, dict):
        for key in ("validation_errors", "detail", "message", "error"):
            if key in body:
                return json.dumps(body[key], ensure_ascii=False)[:300]
    if isinstance(body, str):
        text = body.strip()
        return text.splitlines()[0][:200] if text else "(no detail)"
    if body is None:
        return "(no detail)"
    return json.dumps(body, ensure_ascii=False, default=str)[:300]


def _error_detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        body = response.text
    return _api_detail(body)
