"""Fake REST servers for the KFP v2beta1 API and the Vertex AI pipelineJobs API.

Each server is a real ``http.server.ThreadingHTTPServer`` on 127.0.0.1 (an ephemeral port)
running in a daemon thread, so the real client libraries (``kfp.Client`` and
``google.cloud.aiplatform.PipelineJob`` with the REST transport) talk to it over a socket
exactly as they would to a cluster. Every request is recorded (method, path, query, headers,
body) for assertions. Both servers can be switched to reject everything with 401/403.

Only the endpoints the clients call on submission are implemented:

* KFP (``kfp.Client.create_run_from_pipeline_package``): ``GET /apis/v2beta1/healthz``,
  ``GET /apis/v2beta1/experiments`` (with a ``display_name`` EQUALS filter),
  ``POST /apis/v2beta1/experiments``, ``POST /apis/v2beta1/runs`` and
  ``GET /apis/v2beta1/runs/{id}``. The pipeline spec travels inline in the run body; nothing is
  uploaded.
* Vertex AI (``PipelineJob.submit``): ``POST /v1/projects/{p}/locations/{r}/pipelineJobs``
  (``pipelineJobId`` in the query), ``GET /v1/projects/{p}/locations/{r}/pipelineJobs/{id}``,
  plus the one Cloud Storage call ``submit`` makes to check the pipeline root bucket,
  ``GET /storage/v1/b/{bucket}`` (point ``STORAGE_EMULATOR_HOST`` at :attr:`FakeVertexServer.url`).

Usage::

    with FakeKFPServer() as kfp_server:
        submit_kfp(package, host=kfp_server.url)
        body = kfp_server.last("POST", "/apis/v2beta1/runs").json
"""

from __future__ import annotations

import datetime as _dt
import http.server
import json
import re
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from typing import Any, Self

import google.auth.credentials

_REASONS = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 400: "Bad Request"}


def closed_port() -> int:
    """Returns a 127.0.0.1 TCP port that nothing listens on (connecting to it is refused).

    Returns:
        The port number of a socket that was bound and immediately closed.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class RecordedRequest:
    """One request as the fake server received it.

    Args:
        method: HTTP method, e.g. ``"POST"``.
        path: URL path without the query string.
        query: Parsed query string (each key maps to the list of its values).
        headers: Request headers (header names lower-cased).
        body: Raw request body.
    """

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes = b""
    json: Any = field(default=None)

    def __post_init__(self) -> None:
        if self.body:
            try:
                self.json = json.loads(self.body)
            except ValueError:
                self.json = None


class _FakeServer:
    """Base class: a threaded HTTP server that records requests and dispatches to `route`.

    Set ``delay_s`` to delay every response (timeout tests); see also :meth:`fail` and
    :meth:`slow` for per-endpoint errors and delays.

    Args:
        reject_status: When set (401 or 403), every request is answered with that status.
        required_token: When set, requests without ``Authorization: Bearer <token>`` get 401.
    """

    def __init__(self, reject_status: int | None = None, required_token: str | None = None):
        self.reject_status = reject_status
        self.required_token = required_token
        self.delay_s = 0.0
        self.requests: list[RecordedRequest] = []
        self._injected: list[tuple[str, str, int, str]] = []
        self._delays: list[tuple[str, str, float]] = []
        self._lock = threading.Lock()
        self._httpd: http.server.ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Base URL of the running server, e.g. ``http://127.0.0.1:41234``."""
        if self._httpd is None:
            raise RuntimeError("server is not started")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def start(self) -> Self:
        """Starts serving in a daemon thread.

        Returns:
            The server itself, for chaining.
        """
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep test output clean

            def _handle(self) -> None:
                parsed = urllib.parse.urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                request = RecordedRequest(
                    method=self.command,
                    path=parsed.path,
                    query=urllib.parse.parse_qs(parsed.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=body,
                )
                with server._lock:
                    server.requests.append(request)
                status, payload = server._dispatch(request)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (e.g. a timeout test)

            do_GET = do_POST = do_DELETE = do_PATCH = do_PUT = _handle

        self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops the server and closes its socket."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- queries ---------------------------------------------------------------------------

    def find(self, method: str, path_regex: str) -> list[RecordedRequest]:
        """Returns the recorded requests whose method matches and whose path fully matches.

        Args:
            method: HTTP method, e.g. ``"POST"``.
            path_regex: Regular expression the whole path must match.
        """
        with self._lock:
            return [
                r
                for r in self.requests
                if r.method == method and re.fullmatch(path_regex, r.path) is not None
            ]

    def last(self, method: str, path_regex: str) -> RecordedRequest:
        """Returns the latest recorded request matching `method` and `path_regex`.

        Args:
            method: HTTP method.
            path_regex: Regular expression the whole path must match.

        Raises:
            AssertionError: No such request was received.
        """
        found = self.find(method, path_regex)
        assert found, (
            f"no {method} {path_regex} among {[(r.method, r.path) for r in self.requests]}"
        )
        return found[-1]

    # -- failure injection -----------------------------------------------------------------

    def fail(self, method: str, path_regex: str, status: int, message: str = "injected") -> None:
        """Makes requests matching `method` and `path_regex` fail with `status`.

        Args:
            method: HTTP method, e.g. ``"POST"``.
            path_regex: Regular expression the whole path must match.
            status: HTTP status to answer with.
            message: Error message in the JSON error body.
        """
        self._injected.append((method, path_regex, status, message))

    def slow(self, method: str, path_regex: str, seconds: float) -> None:
        """Makes requests matching `method` and `path_regex` wait `seconds` before answering.

        Args:
            method: HTTP method, e.g. ``"POST"``.
            path_regex: Regular expression the whole path must match.
            seconds: Delay before the response is sent.
        """
        self._delays.append((method, path_regex, seconds))

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, request: RecordedRequest) -> tuple[int, Any]:
        delay = self.delay_s + sum(
            seconds
            for method, path_regex, seconds in self._delays
            if request.method == method and re.fullmatch(path_regex, request.path)
        )
        if delay:
            time.sleep(delay)
        for method, path_regex, status, message in self._injected:
            if request.method == method and re.fullmatch(path_regex, request.path):
                return self._error(status, message)
        if self.reject_status is not None:
            return self._error(self.reject_status, "the request is not authenticated")
        if self.required_token is not None:
            if request.headers.get("authorization") != f"Bearer {self.required_token}":
                return self._error(401, "missing or invalid bearer token")
        try:
            return self.route(request)
        except Exception as exc:  # a bug in the fake: answer 500 rather than hang the client
            return self._error(500, f"fake server error: {exc!r}")

    def route(self, request: RecordedRequest) -> tuple[int, Any]:
        """Answers one request; subclasses implement their API here.

        Args:
            request: The recorded request.

        Returns:
            ``(status, json_payload)``.
        """
        raise NotImplementedError

    def _error(self, status: int, message: str) -> tuple[int, Any]:
        raise NotImplementedError


class FakeKFPServer(_FakeServer):
    """Fake Kubeflow Pipelines API server (v2beta1), enough for ``kfp.Client`` submissions.

    Args:
        reject_status: When set (401 or 403), every request is answered with that status.
        required_token: When set, requests without ``Authorization: Bearer <token>`` get 401.
        multi_user: Value of ``multi_user`` reported by the healthz endpoint.
    """

    def __init__(
        self,
        reject_status: int | None = None,
        required_token: str | None = None,
        multi_user: bool = False,
    ):
        super().__init__(reject_status=reject_status, required_token=required_token)
        self.multi_user = multi_user
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, dict[str, Any]] = {}

    def add_experiment(self, display_name: str, namespace: str = "") -> dict[str, Any]:
        """Pre-creates an experiment, as if an earlier submission had made it.

        Args:
            display_name: The experiment's display name.
            namespace: Its Kubernetes namespace ("" in single-user mode).

        Returns:
            The experiment resource.
        """
        experiment = {
            "experiment_id": str(uuid.uuid4()),
            "display_name": display_name,
            "namespace": namespace,
            "created_at": _now(),
            "storage_state": "AVAILABLE",
        }
        self.experiments[experiment["experiment_id"]] = experiment
        return experiment

    def _error(self, status: int, message: str) -> tuple[int, Any]:
        code = {401: 16, 403: 7, 404: 5, 400: 3}.get(status, 13)
        return status, {"error": message, "code": code, "message": message, "details": []}

    def route(self, request: RecordedRequest) -> tuple[int, Any]:
        method, path = request.method, request.path.rstrip("/")
        if method == "GET" and path == "/apis/v2beta1/healthz":
            return 200, {"commit_sha": "fake", "tag_name": "2.5.0", "multi_user": self.multi_user}
        if method == "GET" and path == "/apis/v2beta1/experiments":
            return 200, self._list_experiments(request)
        if method == "POST" and path == "/apis/v2beta1/experiments":
            body = request.json or {}
            if not body.get("display_name"):
                return self._error(400, "experiment display_name is required")
            return 200, self.add_experiment(body["display_name"], body.get("namespace") or "")
        if method == "POST" and path == "/apis/v2beta1/runs":
            return self._create_run(request.json or {})
        match = re.fullmatch(r"/apis/v2beta1/runs/([^/]+)", path)
        if method == "GET" and match:
            run = self.runs.get(match.group(1))
            return (200, run) if run else self._error(404, f"run {match.group(1)} not found")
        return self._error(404, f"fake KFP: no route for {method} {path}")

    def _list_experiments(self, request: RecordedRequest) -> dict[str, Any]:
        experiments = list(self.experiments.values())
        raw_filter = request.query.get("filter", [""])[0]
        if raw_filter:
            for predicate in json.loads(raw_filter).get("predicates", []):
                key = predicate.get("key")
                wanted = predicate.get("stringValue", predicate.get("string_value"))
                experiments = [e for e in experiments if e.get(key) == wanted]
        namespace = request.query.get("namespace", [""])[0]
        if namespace:
            experiments = [e for e in experiments if e.get("namespace") == namespace]
        if not experiments:
            return {}
        return {"experiments": experiments, "total_size": len(experiments)}

    def _create_run(self, body: dict[str, Any]) -> tuple[int, Any]:
        if body.get("experiment_id") not in self.experiments:
            return self._error(400, f"experiment {body.get('experiment_id')!r} does not exist")
        if not body.get("pipeline_spec") and not body.get("pipeline_version_reference"):
            return self._error(400, "a run needs pipeline_spec or pipeline_version_reference")
        run = dict(body)
        run.update(
            run_id=str(uuid.uuid4()),
            state="PENDING",
            storage_state="AVAILABLE",
            created_at=_now(),
        )
        self.runs[run["run_id"]] = run
        return 200, run


class FakeVertexServer(_FakeServer):
    """Fake Vertex AI pipelineJobs API (v1, REST/JSON) plus the bucket check of Cloud Storage.

    Args:
        reject_status: When set (401 or 403), every request is answered with that status.
        required_token: When set, requests without ``Authorization: Bearer <token>`` get 401.
        project_number: ``projectNumber`` reported for every bucket (aiplatform compares it
            with the project's number to detect bucket squatting).
    """

    def __init__(
        self,
        reject_status: int | None = None,
        required_token: str | None = None,
        project_number: str = "123456789012",
    ):
        super().__init__(reject_status=reject_status, required_token=required_token)
        self.project_number = project_number
        self.jobs: dict[str, dict[str, Any]] = {}

    def _error(self, status: int, message: str) -> tuple[int, Any]:
        grpc_status = {
            400: "INVALID_ARGUMENT",
            401: "UNAUTHENTICATED",
            403: "PERMISSION_DENIED",
            404: "NOT_FOUND",
        }.get(status, "INTERNAL")
        return status, {"error": {"code": status, "message": message, "status": grpc_status}}

    def route(self, request: RecordedRequest) -> tuple[int, Any]:
        method, path = request.method, request.path
        match = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+)/pipelineJobs", path)
        if method == "POST" and match:
            return self._create_job(match.group(1), request)
        match = re.fullmatch(r"/v1/(projects/[^/]+/locations/[^/]+/pipelineJobs/[^/]+)", path)
        if method == "GET" and match:
            job = self.jobs.get(match.group(1))
            return (200, job) if job else self._error(404, f"{match.group(1)} not found")
        match = re.fullmatch(r"/storage/v1/b/([^/]+)", path)
        if method == "GET" and match:
            bucket = match.group(1)
            return 200, {
                "kind": "storage#bucket",
                "name": bucket,
                "id": bucket,
                "projectNumber": self.project_number,
            }
        return self._error(404, f"fake Vertex: no route for {method} {path}")

    def _create_job(self, parent: str, request: RecordedRequest) -> tuple[int, Any]:
        body = request.json or {}
        if not body.get("pipelineSpec"):
            return self._error(400, "pipelineSpec is required")
        job_id = request.query.get("pipelineJobId", [""])[0] or uuid.uuid4().hex
        job = dict(body)
        job.update(
            name=f"{parent}/pipelineJobs/{job_id}",
            state="PIPELINE_STATE_PENDING",
            createTime=_now(),
            updateTime=_now(),
        )
        self.jobs[job["name"]] = job
        return 200, job


class StaticTokenCredentials(google.auth.credentials.Credentials):
    """google.auth credentials that always send the same bearer token.

    Unlike ``google.oauth2.credentials.Credentials(token=...)`` they can be "refreshed" (to the
    same token), like real refreshable credentials: on a 401 google-auth refreshes once and
    retries, so the client sees the server's 401 rather than a RefreshError.

    Args:
        token: The bearer token to send.
    """

    def __init__(self, token: str) -> None:
        super().__init__()
        self._static_token = token
        self.token = token

    def refresh(self, request: Any) -> None:
        """Re-issues the same token.

        Args:
            request: The google-auth transport request (unused).
        """
        self.token = self._static_token
