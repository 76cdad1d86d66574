"""A local HTTP server that speaks the Vertex AI REST calls of :mod:`kd.registry` and
:mod:`kd.custom_job`.

``models.upload`` and ``endpoints.deployModel`` each answer a long-running operation that is
not done; the first poll of it (``GET /v1/{operation}`` or ``/ui/...``) answers done with the
response, as Vertex AI does. ``customJobs.create`` answers the job, pending; each ``get`` of
it moves it one state on through ``job_states`` (default: running, then succeeded);
``job_error`` is the error a failed job carries; ``job_poll_failures`` polls answer HTTP 503
first; ``customJobs.cancel`` is recorded. Every
request is recorded (method, path, JSON body, headers) for the tests to assert what was sent.
``fail_with`` makes the upload answer an HTTP error instead.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

V1 = "type.googleapis.com/google.cloud.aiplatform.v1."


class FakeVertex:
    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.operations: dict[str, dict[str, Any]] = {}
        self.fail_with: tuple[int, str] | None = None
        self.job_states = ["JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
        self.job_error = ""
        self.job_poll_failures = 0  # the first polls of a job answer HTTP 503
        self.jobs: dict[str, dict[str, Any]] = {}
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, code: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _record(self) -> dict[str, Any]:
                n = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(n) if n else b""
                entry = {
                    "method": self.command,
                    "path": self.path.split("?")[0],
                    "body": json.loads(raw) if raw else None,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                }
                fake.requests.append(entry)
                return entry

            def do_POST(self) -> None:  # noqa: N802
                req = self._record()
                path = req["path"]
                if path.endswith("/customJobs"):
                    name = f"{path[len('/v1/') :]}/{len(fake.jobs) + 1}"
                    job = {**req["body"], "name": name, "state": "JOB_STATE_PENDING"}
                    fake.jobs[name] = {"job": job, "states": list(fake.job_states)}
                    self._send(200, job)
                elif path.endswith(":cancel"):
                    self._send(200, {})
                elif path.endswith("/models:upload"):
                    if fake.fail_with:
                        code, status = fake.fail_with
                        self._send(
                            code, {"error": {"code": code, "message": "denied", "status": status}}
                        )
                        return
                    parent = path[len("/v1/") : -len("/models:upload")]
                    body = req["body"]
                    model = body.get("parentModel") or f"{parent}/models/4242"
                    version = "2" if body.get("parentModel") else "1"
                    response = {"@type": V1 + "UploadModelResponse", "model": model}
                    response["modelVersionId"] = version
                    self._send(200, fake._operation(f"{model}/operations/1", response))
                elif path.endswith(":deployModel"):
                    endpoint = path[len("/v1/") : -len(":deployModel")]
                    response = {"@type": V1 + "DeployModelResponse", "deployedModel": {"id": "77"}}
                    self._send(200, fake._operation(f"{endpoint}/operations/2", response))
                else:
                    self._send(
                        404, {"error": {"code": 404, "message": path, "status": "NOT_FOUND"}}
                    )

            def do_GET(self) -> None:  # noqa: N802
                req = self._record()
                # The client polls an operation at /ui/NAME (its first HTTP rule) or /v1/NAME.
                name = req["path"].split("/", 2)[2]
                if name in fake.jobs and fake.job_poll_failures > 0:
                    fake.job_poll_failures -= 1
                    self._send(
                        503, {"error": {"code": 503, "message": "busy", "status": "UNAVAILABLE"}}
                    )
                elif name in fake.jobs:
                    entry = fake.jobs[name]
                    if entry["states"]:
                        entry["job"]["state"] = entry["states"].pop(0)
                    if entry["job"]["state"] == "JOB_STATE_FAILED" and fake.job_error:
                        entry["job"]["error"] = {"code": 3, "message": fake.job_error}
                    self._send(200, entry["job"])
                elif name in fake.operations:
                    self._send(200, {"name": name, "done": True, **fake.operations[name]})
                else:
                    self._send(
                        404, {"error": {"code": 404, "message": name, "status": "NOT_FOUND"}}
                    )

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def _operation(self, name: str, response: dict[str, Any]) -> dict[str, Any]:
        self.operations[name] = {"response": response}
        return {"name": name, "done": False}

    def calls(self, method: str | None = None) -> list[dict[str, Any]]:
        return [r for r in self.requests if method is None or r["method"] == method]

    def __enter__(self) -> FakeVertex:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()
