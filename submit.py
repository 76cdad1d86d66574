"""Submit a compiled kd-pipeline package to Kubeflow Pipelines or Vertex AI Pipelines.

``pipeline.py`` compiles the pipeline to a YAML package and calls into this module to run it:

* :func:`submit_kfp` sends it to a Kubeflow Pipelines v2 API server through ``kfp.Client``
  (an experiment is looked up or created, then a run is created with the spec inline).
* :func:`submit_vertex` creates a Vertex AI ``PipelineJob`` through
  ``google.cloud.aiplatform`` (REST transport) and returns without waiting for it.
* :func:`add_submit_arguments` / :func:`submit_from_args` provide the shared CLI options.

Every failure the user can fix (unreachable endpoint, rejected or missing credentials, a
missing package file, a missing flag) is raised as :class:`SubmitError` with a one-line message
that says what failed and how to fix it; tokens never appear in messages. The heavy client
libraries are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import re
import socket
import ssl
import urllib.error
import urllib.parse
import urllib.request
import warnings
from collections.abc import Iterator
from typing import Any

from kd.config import TARGETS, ResourceConfig

__all__ = [
    "SubmitError",
    "add_submit_arguments",
    "submit_from_args",
    "submit_kfp",
    "submit_vertex",
]

DEFAULT_EXPERIMENT = "kd-pipeline"
DEFAULT_DISPLAY_NAME = "kd-pipeline"
DEFAULT_TIMEOUT_S = 30.0
_CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
_KFP_FIX = (
    "Fix: check --host and that the endpoint is reachable "
    "(e.g. kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80, "
    "then --host http://localhost:8080)"
)
_KFP_AUTH_FIX = (
    "Fix: pass --token (or set KFP_TOKEN) with a bearer token the endpoint accepts, e.g. "
    "`kubectl -n <namespace> create token default-editor`, or your IAP/OIDC identity token"
)
_ADC_FIX = (
    "Fix: run `gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS "
    "to a service-account key file"
)
_MAX_DETAIL = 300


class SubmitError(Exception):
    """One clear line for the user: what failed and how to fix it."""


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------


def _one_line(text: str, secrets: tuple[str | None, ...] = (), limit: int = _MAX_DETAIL) -> str:
    """Collapses whitespace, removes secrets and truncates `text`.

    Args:
        text: Any message, possibly multi-line.
        secrets: Strings (tokens) that must not appear in the result.
        limit: Maximum length of the result.

    Returns:
        A single line of at most `limit` characters.
    """
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(message: str, secrets: tuple[str | None, ...] = ()) -> SubmitError:
    """Builds a SubmitError whose message is one line with the secrets removed.

    Args:
        message: What failed and how to fix it.
        secrets: Strings (tokens) that must not appear in the message.

    Returns:
        The exception, ready to raise.
    """
    return SubmitError(_one_line(message, secrets, limit=1000))


def _exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """Yields `exc` and every exception it wraps (cause, context, ``reason``, args).

    Args:
        exc: The outermost exception.
    """
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked += [a for a in getattr(current, "args", ()) if isinstance(a, BaseException)]
        stack.extend(e for e in linked if isinstance(e, BaseException))


def _network_reason(exc: BaseException, timeout_s: float | None = None) -> str | None:
    """Names the network failure behind `exc` in a few words, or None if it is not one.

    Args:
        exc: An exception raised by an HTTP client (urllib, urllib3, requests).
        timeout_s: The timeout in force, to quote in the message.

    Returns:
        E.g. ``"connection refused"``, ``"host name not found (DNS)"`` or None.
    """
    timed_out = f"timed out after {timeout_s:g} s" if timeout_s else "timed out"
    for err in _exception_chain(exc):
        if isinstance(err, ConnectionRefusedError):
            return "connection refused"
        if isinstance(err, socket.gaierror):
            return "host name not found (DNS)"
        if isinstance(err, TimeoutError | socket.timeout):
            return timed_out
        if isinstance(err, ssl.SSLError):
            return f"TLS error ({_one_line(str(err), limit=120)})"
        if isinstance(err, ConnectionResetError):
            return "connection reset by the server"
    text = " ".join(str(e) for e in _exception_chain(exc)).lower()
    for needle, reason in (
        ("connection refused", "connection refused"),
        ("name or service not known", "host name not found (DNS)"),
        ("nodename nor servname", "host name not found (DNS)"),
        ("temporary failure in name resolution", "host name not found (DNS)"),
        ("failed to resolve", "host name not found (DNS)"),
        ("timed out", timed_out),
        ("certificate verify failed", "TLS certificate verification failed"),
        ("remote end closed connection", "the server closed the connection"),
        ("connection aborted", "the server closed the connection"),
    ):
        if needle in text:
            return reason
    return None


def _is_network_error(exc: BaseException) -> bool:
    """Tells whether `exc` comes from the transport layer (socket, TLS, HTTP connection).

    Args:
        exc: Any exception.
    """
    for err in _exception_chain(exc):
        if isinstance(err, ConnectionError | TimeoutError | socket.gaierror | ssl.SSLError):
            return True
        module = type(err).__module__
        if module.startswith(("urllib3", "requests", "http.client")):
            return True
    return False


def _check_package(package_path: str) -> None:
    """Raises SubmitError unless `package_path` is an existing local file (or a remote URI).

    Args:
        package_path: Path of the compiled pipeline package.
    """
    if "://" in package_path:
        return
    if not os.path.isfile(package_path):
        what = "is a directory" if os.path.isdir(package_path) else "does not exist"
        raise _fail(
            f"pipeline package {package_path} {what}. "
            "Fix: compile the pipeline first (pipeline.py writes the YAML) or pass its path"
        )


def _http_reason(status: int) -> str:
    """Returns ``"401 Unauthorized"``-style text for an HTTP status code.

    Args:
        status: HTTP status code.
    """
    import http

    try:
        return f"{status} {http.HTTPStatus(status).phrase}"
    except ValueError:
        return str(status)


# --------------------------------------------------------------------------------------------
# Kubeflow Pipelines
# --------------------------------------------------------------------------------------------


def _normalize_host(host: str) -> str:
    """Returns `host` with a scheme and without a final '/'.

    A host without a scheme gets http:// when it is local (``localhost``/``127.x``, the usual
    ``kubectl port-forward``) and https:// otherwise (kfp's own default).

    Args:
        host: KFP endpoint as typed by the user.
    """
    host = host.strip()
    if not re.match(r"^https?://", host, re.IGNORECASE):
        local = re.match(r"^(localhost|127\.[0-9.]+|\[::1\])(:|/|$)", host, re.IGNORECASE)
        host = ("http://" if local else "https://") + host
    return host.rstrip("/")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Makes urllib raise HTTPError on a redirect instead of following it (login pages)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # type: ignore[override]
        return None


def _kfp_error_message(body: bytes | str | None) -> str:
    """Extracts the ``message``/``error`` of a KFP (grpc-gateway) JSON error body.

    Args:
        body: The response body.

    Returns:
        The message, or "" when the body is not such JSON.
    """
    if not body:
        return ""
    try:
        data = json.loads(body)
    except (ValueError, TypeError):
        return ""
    if isinstance(data, dict):
        return str(data.get("message") or data.get("error") or "")
    return ""


def _kfp_http_error(host: str, status: int, detail: str, token: str | None) -> SubmitError:
    """Maps an HTTP error status from KFP to a SubmitError.

    Args:
        host: The KFP endpoint.
        status: HTTP status code.
        detail: The server's error message, if any.
        token: The token in use (redacted from the message).
    """
    detail = f": {_one_line(detail, (token,), limit=200)}" if detail else ""
    if status in (401, 403):
        return _fail(
            f"KFP at {host} rejected the credentials ({_http_reason(status)}{detail}). "
            f"{_KFP_AUTH_FIX}",
            (token,),
        )
    if 300 <= status < 400:
        return _fail(
            f"KFP at {host} redirected the API request ({_http_reason(status)}), "
            f"most likely to a login page, so the credentials were not accepted. {_KFP_AUTH_FIX}",
            (token,),
        )
    if status == 404:
        return _fail(
            f"KFP at {host} has no v2beta1 API ({_http_reason(status)}{detail}). "
            "Fix: point --host at a Kubeflow Pipelines >= 2.0 endpoint (the UI/API address, "
            "without a path)",
            (token,),
        )
    return _fail(
        f"KFP at {host} refused the request ({_http_reason(status)}{detail}). "
        "Fix: check the pipeline package, parameters and the KFP server logs",
        (token,),
    )


def _kfp_preflight(host: str, token: str | None, timeout_s: float) -> dict[str, Any]:
    """Checks that the KFP API answers (with the credentials) before kfp.Client is built.

    kfp.Client retries a failing healthz 5 times with 5 s sleeps and its later calls have no
    timeout, so reachability and credentials are checked here, quickly and with clear errors.

    Args:
        host: Normalized KFP endpoint.
        token: Bearer token, if any.
        timeout_s: Socket timeout in seconds.

    Returns:
        The healthz JSON (e.g. ``{"multi_user": false, ...}``), or {} if it is not JSON.
    """
    request = urllib.request.Request(f"{host}/apis/v2beta1/healthz", method="GET")
    request.add_header("Accept", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    opener = urllib.request.build_opener(_NoRedirect())
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body = response.read()
    except urllib.error.HTTPError as exc:
        raise _kfp_http_error(host, exc.code, _kfp_error_message(exc.read()), token) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = _network_reason(exc, timeout_s) or _one_line(str(exc), (token,), limit=150)
        raise _fail(f"cannot reach KFP at {host}: {reason}. {_KFP_FIX}", (token,)) from None
    try:
        data = json.loads(body)
    except ValueError:
        raise _fail(
            f"KFP at {host} answered /apis/v2beta1/healthz with something other than JSON "
            f"(a login page or another service?). {_KFP_AUTH_FIX}; or check --host",
            (token,),
        ) from None
    return data if isinstance(data, dict) else {}


def _kfp_implicit_namespace() -> str | None:
    """Returns the namespace kfp.Client would use when none is given (context file, pod).

    Returns:
        The namespace from ``~/.config/kfp/context.json`` or the in-cluster service account
        namespace file, or None.
    """
    try:
        with open(os.path.expanduser("~/.config/kfp/context.json")) as f:
            namespace = json.load(f).get("namespace")
        if namespace:
            return str(namespace)
    except (OSError, ValueError, AttributeError):
        pass
    try:
        with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
            return f.read().strip() or None
    except OSError:
        return None


def _set_kfp_request_timeout(client: Any, timeout_s: float) -> None:
    """Gives every later KFP API call of `client` a (connect, read) timeout.

    kfp.Client does not pass ``_request_timeout`` to the generated API, so a hung server would
    block forever; this wraps the shared REST client's ``request``. Best effort: a kfp version
    without these attributes is left alone.

    Args:
        client: A kfp.Client.
        timeout_s: Timeout in seconds for connecting and for reading each response.
    """
    try:
        rest_client = client._run_api.api_client.rest_client
        original = rest_client.request
    except AttributeError:
        return

    def request(*args: Any, _request_timeout: Any = None, **kwargs: Any) -> Any:
        return original(
            *args, _request_timeout=_request_timeout or (timeout_s, timeout_s), **kwargs
        )

    rest_client.request = request


def submit_kfp(
    package_path: str,
    *,
    host: str,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    params: dict | None = None,
    namespace: str | None = None,
    existing_token: str | None = None,
    enable_caching: bool | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
) -> dict:
    """Submits a compiled pipeline package as a run on a Kubeflow Pipelines v2 server.

    The experiment is looked up by name and created when missing; the pipeline spec is sent
    inline with the run (nothing is uploaded as a pipeline version).

    Args:
        package_path: Compiled pipeline package (.yaml/.yml, or .zip/.tar.gz/.tgz holding one).
        host: KFP API endpoint, e.g. ``http://localhost:8080``; without a scheme, http:// is
            assumed for localhost/127.x and https:// otherwise.
        experiment: Experiment to file the run under.
        run_name: Display name of the run; kfp picks "<file name> <timestamp>" when None.
        params: Pipeline parameter values; the pipeline's defaults apply to the others.
        namespace: Kubernetes namespace (profile) for multi-user KFP; None for single-user.
        existing_token: Bearer token sent as ``Authorization: Bearer ...``; never logged.
        enable_caching: Overrides the compile-time caching of every task when not None.
        timeout_s: Timeout in seconds for connecting to and for each response of the server.

    Returns:
        ``{"run_id", "run_url", "experiment", "experiment_id", "run_name", "host"}``.

    Raises:
        SubmitError: The package is missing or invalid, the endpoint is unreachable, the
            credentials are rejected, or the server refuses the run.
    """
    _check_package(package_path)
    if not host or not host.strip():
        raise _fail(
            "no KFP endpoint given. Fix: pass --host (e.g. http://localhost:8080) "
            "or set KF_PIPELINES_ENDPOINT"
        )
    host = _normalize_host(host)
    token = existing_token or None
    secrets = (token,)

    healthz = _kfp_preflight(host, token, timeout_s)
    if healthz.get("multi_user") and not namespace and not _kfp_implicit_namespace():
        raise _fail(
            f"KFP at {host} runs in multi-user mode and no namespace was given. "
            "Fix: pass --namespace <your Kubeflow profile namespace>"
        )

    try:
        import kfp
        import kfp_server_api
        import urllib3
    except ImportError as exc:  # pragma: no cover - the pinned environment has them
        raise _fail(f"the kfp package is not installed ({exc}). Fix: pip install kfp") from None

    log = io.StringIO()
    try:
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(log),
            _quiet_loggers(("root", "kfp")),
        ):
            warnings.simplefilter("ignore")
            client = kfp.Client(host=host, namespace=namespace or "kubeflow", existing_token=token)
            _set_kfp_request_timeout(client, timeout_s)
            result = client.create_run_from_pipeline_package(
                package_path,
                arguments=params or {},
                run_name=run_name,
                experiment_name=experiment,
                namespace=namespace,
                enable_caching=enable_caching,
            )
            run_info = result.run_info
    except kfp_server_api.ApiException as exc:
        status = int(exc.status or 0)
        if status == 0:
            reason = _network_reason(exc, timeout_s) or _one_line(str(exc.reason), secrets, 150)
            raise _fail(f"cannot reach KFP at {host}: {reason}. {_KFP_FIX}", secrets) from None
        raise _kfp_http_error(host, status, _kfp_error_message(exc.body), token) from None
    except (urllib3.exceptions.HTTPError, OSError, TimeoutError) as exc:
        if isinstance(exc, FileNotFoundError | IsADirectoryError | PermissionError):
            raise _fail(f"cannot read pipeline package {package_path}: {exc.strerror}") from None
        reason = _network_reason(exc, timeout_s) or _one_line(str(exc), secrets, 150)
        raise _fail(f"cannot reach KFP at {host}: {reason}. {_KFP_FIX}", secrets) from None
    except Exception as exc:
        if _is_network_error(exc):
            reason = _network_reason(exc, timeout_s) or type(exc).__name__
            raise _fail(f"cannot reach KFP at {host}: {reason}. {_KFP_FIX}", secrets) from None
        raise _fail(
            f"cannot submit {package_path} to KFP at {host}: {type(exc).__name__}: "
            f"{_one_line(str(exc), secrets, 200)}. Fix: recompile the pipeline and check "
            "--param names and values against its parameters",
            secrets,
        ) from None

    run_id = run_info.run_id
    return {
        "run_id": run_id,
        "run_url": f"{host}/#/runs/details/{run_id}",
        "experiment": experiment,
        "experiment_id": getattr(run_info, "experiment_id", None),
        "run_name": getattr(run_info, "display_name", None) or run_name,
        "host": host,
    }


# --------------------------------------------------------------------------------------------
# Vertex AI Pipelines
# --------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_loggers(names: tuple[str, ...]) -> Iterator[None]:
    """Raises the given loggers (and their existing children) to WARNING for a while.

    Args:
        names: Logger names; ``"root"`` is the root logger.
    """
    saved: dict[logging.Logger, int] = {}
    for name in names:
        prefix = name + "."
        loggers = [logging.getLogger() if name == "root" else logging.getLogger(name)]
        loggers += [
            logger
            for key, logger in logging.Logger.manager.loggerDict.items()
            if key.startswith(prefix) and isinstance(logger, logging.Logger)
        ]
        for logger in loggers:
            saved.setdefault(logger, logger.level)
            logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        for logger, level in saved.items():
            logger.setLevel(level)


class _OneLineExceptionFilter(logging.Filter):
    """Turns ``logger.exception(...)`` records into one-line warnings (no traceback).

    PipelineJob.submit logs a full traceback when it cannot check or create the pipeline
    root bucket, then goes on submitting; the user gets one warning line instead.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and record.exc_info[1] is not None:
            exc = record.exc_info[1]
            detail = _one_line(f"{type(exc).__name__}: {exc}", limit=250)
            record.msg = f"warning: {record.getMessage()}: {detail} (submitting anyway)"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def _vertex_error(
    exc: BaseException, endpoint: str, project: str, region: str, service_account: str | None
) -> SubmitError:
    """Maps an exception raised while creating a Vertex AI PipelineJob to a SubmitError.

    Args:
        exc: The exception.
        endpoint: The API endpoint in use (for the message).
        project: Google Cloud project ID.
        region: Vertex AI region.
        service_account: The run-as service account, if any.
    """
    from google.api_core import exceptions as core_exceptions
    from google.auth import exceptions as auth_exceptions

    if isinstance(exc, auth_exceptions.DefaultCredentialsError):
        return _fail(f"no Google Cloud credentials found. {_ADC_FIX}")
    if isinstance(exc, auth_exceptions.RefreshError):
        return _fail(
            "the Google Cloud credentials could not be refreshed "
            f"({_one_line(str(exc), limit=150)}). {_ADC_FIX}"
        )
    if isinstance(exc, core_exceptions.GoogleAPICallError):
        status = exc.code if isinstance(exc.code, int) else 0
        # REST errors read "POST https://host/v1/...: message"; keep the message.
        detail = re.sub(r"^[A-Z]+ \S+: ", "", str(exc.message or exc))
        detail = _one_line(detail, limit=250)
        if status == 401:
            fix = (
                "Fix: renew the credentials with `gcloud auth application-default login` "
                "(or check GOOGLE_APPLICATION_CREDENTIALS)"
            )
        else:
            fix = (
                "Fix: use an account (`gcloud auth application-default login`) that has "
                f"roles/aiplatform.user on project {project}"
            )
            if service_account:
                fix += f" and roles/iam.serviceAccountUser on {service_account}"
        if status in (401, 403):
            return _fail(
                f"Vertex AI at {endpoint} rejected the credentials "
                f"({_http_reason(status)}: {detail}). {fix}"
            )
        if status == 404:
            return _fail(
                f"Vertex AI at {endpoint} answered {_http_reason(status)} ({detail}). "
                "Fix: check --project and --region (and that the Vertex AI API is enabled)"
            )
        if status in (502, 503, 504) and _network_reason(exc):
            return _fail(
                f"cannot reach Vertex AI at {endpoint}: {_network_reason(exc)}. "
                "Fix: check --region, network access and proxy settings"
            )
        label = _http_reason(status) if status else type(exc).__name__
        return _fail(
            f"Vertex AI at {endpoint} refused the pipeline job ({label}: {detail}). "
            "Fix: check the pipeline package, --param values, --pipeline-root and "
            "--service-account"
        )
    if isinstance(exc, auth_exceptions.TransportError) or _is_network_error(exc):
        reason = _network_reason(exc) or _one_line(str(exc), limit=150)
        return _fail(
            f"cannot reach Vertex AI at {endpoint}: {reason}. "
            "Fix: check --region, network access and proxy settings"
        )
    if isinstance(exc, ValueError):
        return _fail(
            f"invalid Vertex AI pipeline job: {_one_line(str(exc), limit=300)}. "
            "Fix: check --region, --label, --param and the pipeline package"
        )
    return _fail(
        f"cannot submit to Vertex AI at {endpoint}: {type(exc).__name__}: "
        f"{_one_line(str(exc), limit=250)}. Fix: check that the package is a pipeline "
        "compiled by kfp 2.x and that --param names match its parameters"
    )


def submit_vertex(
    package_path: str,
    *,
    project: str,
    region: str,
    pipeline_root: str,
    service_account: str | None = None,
    params: dict | None = None,
    display_name: str = DEFAULT_DISPLAY_NAME,
    enable_caching: bool | None = None,
    labels: dict | None = None,
    api_endpoint: str | None = None,
    credentials: Any = None,
    timeout_s: float | None = 60.0,
) -> dict:
    """Creates a Vertex AI PipelineJob from a compiled package and returns without waiting.

    The aiplatform library is used with its REST transport (plain HTTPS, same code path as
    the tests). ``api_endpoint`` overrides the regional endpoint; a value with a scheme, such
    as ``http://127.0.0.1:8123``, is used as-is (that is how the tests reach a local fake).
    Before creating the job the library checks (or creates) the pipeline root bucket through
    Cloud Storage; a failure there is reported as a one-line warning, not an error.

    Args:
        package_path: Compiled pipeline package (YAML/JSON PipelineSpec).
        project: Google Cloud project ID.
        region: Vertex AI region, e.g. ``us-central1``.
        pipeline_root: ``gs://`` URI under which the run writes its artifacts.
        service_account: Run-as service account; the project's default when None.
        params: Pipeline parameter values; the pipeline's defaults apply to the others.
        display_name: Display name of the pipeline job.
        enable_caching: Overrides the compile-time caching of every task when not None.
        labels: Labels for the job (lower-case keys and values).
        api_endpoint: API endpoint override (host[:port] or a URL with scheme).
        credentials: google.auth credentials; Application Default Credentials when None.
        timeout_s: Timeout in seconds of the create request; None waits indefinitely.

    Returns:
        ``{"job_name", "job_id", "state", "dashboard_url"}``; job_name is the resource name
        ``projects/P/locations/R/pipelineJobs/ID``.

    Raises:
        SubmitError: A flag is invalid, the package is missing, credentials are missing or
            rejected, the endpoint is unreachable, or Vertex AI refuses the job.
    """
    _check_package(package_path)
    missing = [
        flag
        for flag, value in (
            ("--project", project),
            ("--region", region),
            ("--pipeline-root", pipeline_root),
        )
        if not value
    ]
    if missing:
        raise _fail(f"Vertex AI submission needs {', '.join(missing)}. Fix: pass them")
    if not pipeline_root.startswith("gs://"):
        raise _fail(
            f"--pipeline-root must be a Cloud Storage URI, got {pipeline_root!r}. "
            "Fix: pass e.g. --pipeline-root gs://my-bucket/kd-pipeline"
        )
    endpoint = api_endpoint or f"https://{region}-aiplatform.googleapis.com"

    try:
        import google.auth
        from google.auth import exceptions as auth_exceptions
        from google.cloud import aiplatform
        from google.cloud.aiplatform import initializer
    except ImportError as exc:  # pragma: no cover - the pinned environment has them
        raise _fail(
            f"google-cloud-aiplatform is not installed ({exc}). "
            "Fix: pip install google-cloud-aiplatform"
        ) from None

    if credentials is None:
        try:
            with warnings.catch_warnings():  # e.g. "no quota project" for user credentials
                warnings.simplefilter("ignore")
                credentials, _ = google.auth.default(scopes=[_CLOUD_PLATFORM_SCOPE])
        except auth_exceptions.DefaultCredentialsError:
            raise _fail(f"no Google Cloud credentials found. {_ADC_FIX}") from None
        except Exception as exc:
            raise _vertex_error(exc, endpoint, project, region, service_account) from None

    config = initializer.global_config
    saved = {name: getattr(config, name, None) for name in ("_api_endpoint", "_api_transport")}
    job_logger = logging.getLogger("google.cloud.aiplatform.pipeline_jobs")
    one_line = _OneLineExceptionFilter()
    job_logger.addFilter(one_line)
    try:
        with warnings.catch_warnings(), _quiet_loggers(("google.cloud.aiplatform", "google.auth")):
            warnings.simplefilter("ignore")
            # aiplatform keeps the endpoint and transport in its process-wide config; they are
            # set for this call only and restored in `finally`.
            aiplatform.init(api_endpoint=api_endpoint, api_transport="rest")
            job = aiplatform.PipelineJob(
                display_name=display_name,
                template_path=package_path,
                pipeline_root=pipeline_root,
                parameter_values=params or {},
                enable_caching=enable_caching,
                labels=labels or None,
                project=project,
                location=region,
                credentials=credentials,
            )
            job.submit(service_account=service_account, create_request_timeout=timeout_s)
            resource = job._gca_resource
    except Exception as exc:
        raise _vertex_error(exc, endpoint, project, region, service_account) from None
    finally:
        job_logger.removeFilter(one_line)
        for name, value in saved.items():
            if hasattr(config, name):
                setattr(config, name, value)

    job_name = resource.name
    job_id = job_name.rsplit("/", 1)[-1]
    state = getattr(resource.state, "name", None) or str(resource.state)
    dashboard_url = (
        f"https://console.cloud.google.com/vertex-ai/locations/{region}/pipelines/runs/"
        f"{job_id}?project={project}"
    )
    return {"job_name": job_name, "job_id": job_id, "state": state, "dashboard_url": dashboard_url}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _key_value(text: str) -> tuple[str, str]:
    """Splits ``KEY=VALUE`` (argparse type).

    Args:
        text: The option's argument.

    Raises:
        argparse.ArgumentTypeError: There is no '=' or the key is empty.
    """
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value


def _param_value(value: str) -> Any:
    """Parses a ``--param`` value as JSON (numbers, booleans, lists, objects) or keeps the string.

    Args:
        value: The text after '='.
    """
    try:
        return json.loads(value)
    except ValueError:
        return value


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the submission options (KFP and Vertex AI) to `parser`.

    Args:
        parser: The parser (or sub-parser) of the submitting command.
    """
    group = parser.add_argument_group("submission")
    group.add_argument(
        "--target",
        choices=TARGETS,
        default=ResourceConfig.target,
        help="where to run: a Kubeflow Pipelines server or Vertex AI Pipelines "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--host",
        default=None,
        help="KFP API endpoint, e.g. http://localhost:8080 after kubectl port-forward; without "
        "a scheme, http:// is assumed for localhost and https:// otherwise "
        "(default: $KF_PIPELINES_ENDPOINT; required for --target kfp)",
    )
    group.add_argument(
        "--namespace",
        default=None,
        help="Kubeflow profile namespace for multi-user KFP (default: none, single-user KFP)",
    )
    group.add_argument(
        "--token",
        default=None,
        help="bearer token for the KFP endpoint; never printed "
        "(default: $KFP_TOKEN if set, else no Authorization header)",
    )
    group.add_argument(
        "--experiment",
        default=DEFAULT_EXPERIMENT,
        help=f"KFP experiment to file the run under, created if missing "
        f"(default: {DEFAULT_EXPERIMENT})",
    )
    group.add_argument(
        "--run-name",
        default=None,
        help="KFP run name (default: '<package file name> <timestamp>', chosen by kfp)",
    )
    group.add_argument(
        "--project",
        default=None,
        help="Google Cloud project ID (default: none; required for --target vertex)",
    )
    group.add_argument(
        "--region",
        default=None,
        help="Vertex AI region, e.g. us-central1 (default: none; required for --target vertex)",
    )
    group.add_argument(
        "--pipeline-root",
        default=None,
        help="gs:// URI for the run's artifacts (default: none; required for --target vertex)",
    )
    group.add_argument(
        "--service-account",
        default=None,
        help="Vertex AI run-as service account "
        "(default: the project's Compute Engine default service account)",
    )
    group.add_argument(
        "--display-name",
        default=None,
        help=f"Vertex AI pipeline job display name "
        f"(default: --run-name if given, else {DEFAULT_DISPLAY_NAME})",
    )
    group.add_argument(
        "--no-cache",
        action="store_true",
        default=False,
        help="disable step caching for every task (default: off, the compile-time caching "
        "settings apply)",
    )
    group.add_argument(
        "--param",
        action="append",
        type=_key_value,
        default=None,
        metavar="KEY=VALUE",
        help="pipeline parameter, repeatable; VALUE is parsed as JSON when possible, else "
        "kept as a string (default: none, the pipeline's defaults apply)",
    )
    group.add_argument(
        "--label",
        action="append",
        type=_key_value,
        default=None,
        metavar="KEY=VALUE",
        help="Vertex AI job label, repeatable (default: none)",
    )


def submit_from_args(args: argparse.Namespace, package_path: str) -> dict:
    """Validates the parsed submission options and submits `package_path` to the target.

    Prints one line with the run/job id and its URL.

    Args:
        args: Namespace produced by a parser set up with :func:`add_submit_arguments`.
        package_path: Compiled pipeline package.

    Returns:
        The result of :func:`submit_kfp` or :func:`submit_vertex`, plus ``"target"``.

    Raises:
        SubmitError: A required option is missing or the submission fails.
    """

    def opt(name: str) -> Any:
        return getattr(args, name, None)

    target = opt("target") or ResourceConfig.target
    params = {key: _param_value(value) for key, value in (opt("param") or [])}
    if "grid" in params:
        # The sweep's loop reads every key of each grid point: fill in the loss defaults.
        from parameters import full_grid

        params["grid"] = full_grid(params["grid"])
    enable_caching = False if opt("no_cache") else None

    if target == "kfp":
        host = opt("host") or os.environ.get("KF_PIPELINES_ENDPOINT")
        if not host:
            raise _fail(
                "--target kfp needs --host (the KFP API endpoint). Fix: pass e.g. "
                "--host http://localhost:8080 after "
                "`kubectl port-forward -n kubeflow svc/ml-pipeline-ui 8080:80`, "
                "or set KF_PIPELINES_ENDPOINT"
            )
        result = submit_kfp(
            package_path,
            host=host,
            experiment=opt("experiment") or DEFAULT_EXPERIMENT,
            run_name=opt("run_name"),
            params=params,
            namespace=opt("namespace"),
            existing_token=opt("token") or os.environ.get("KFP_TOKEN") or None,
            enable_caching=enable_caching,
        )
        print(
            f"Submitted KFP run {result['run_id']} "
            f"(experiment {result['experiment']}): {result['run_url']}"
        )
    elif target == "vertex":
        missing = [
            flag
            for flag, name in (
                ("--project", "project"),
                ("--region", "region"),
                ("--pipeline-root", "pipeline_root"),
            )
            if not opt(name)
        ]
        if missing:
            raise _fail(
                f"--target vertex needs {', '.join(missing)}. Fix: pass e.g. "
                "--project my-project --region us-central1 "
                "--pipeline-root gs://my-bucket/kd-pipeline"
            )
        result = submit_vertex(
            package_path,
            project=opt("project"),
            region=opt("region"),
            pipeline_root=opt("pipeline_root"),
            service_account=opt("service_account"),
            params=params,
            display_name=opt("display_name") or opt("run_name") or DEFAULT_DISPLAY_NAME,
            enable_caching=enable_caching,
            labels=dict(opt("label") or []) or None,
        )
        print(
            f"Submitted Vertex AI pipeline job {result['job_name']} "
            f"({result['state']}): {result['dashboard_url']}"
        )
    else:
        raise _fail(f"unknown --target {target!r}. Fix: use --target kfp or --target vertex")
    return {"target": target, **result}
