"""The pipeline's parameters: one place maps them to stage configs and checks them.

Compile, submit, the local runner and the benchmarks all go through :func:`resolve`: an
unknown name (with the closest known one suggested), a value of the wrong type or a bad value
is refused here, with the fix, before any network call or any stage starts. The stage configs
themselves (:mod:`kd.config`) hold every default and every range check; this module only maps
the flat pipeline parameters (``teacher_epochs``, ``student_batch_size``, ...) onto them.
"""

from __future__ import annotations

import difflib
import json
from typing import Any

from kd.config import (
    LOSS_KEYS,
    DistillConfig,
    EvalConfig,
    ExportConfig,
    GateConfig,
    RegistryConfig,
    ScratchConfig,
    SplitConfig,
    StudentConfig,
    SweepConfig,
    TeacherConfig,
    TeacherSourceConfig,
    loss_defaults,
    uneven_batch,
)
from kd.config import TARGETS as REMOTE_TARGETS
from kd.errors import ConfigError

#: Where a run goes: ``local`` (kfp.local), or a remote target of ``pipeline.py submit``.
TARGETS = ("local", *REMOTE_TARGETS)


class ParameterError(ValueError):
    """A pipeline parameter that is unknown, of the wrong type or out of range."""


def parse_value(text: str) -> Any:
    """``KEY=VALUE`` values: JSON when it parses (numbers, true/false), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def pipeline_function(which: str = "main", res: Any = None) -> Any:
    """The ``main`` or ``sweep`` pipeline function of pipeline.py."""
    import pipeline

    return pipeline.make_sweep_pipeline(res) if which == "sweep" else pipeline.make_pipeline(res)


def pipeline_parameters(which: str = "main") -> dict[str, Any]:
    """The pipeline's parameters and their defaults (from its signature)."""
    import inspect

    sig = inspect.signature(pipeline_function(which).pipeline_func)
    return {name: p.default for name, p in sig.parameters.items()}


def resolve(
    overrides: dict[str, Any],
    which: str = "main",
    base: dict[str, Any] | None = None,
    target: str = "local",
) -> dict[str, Any]:
    """Every parameter of the ``which`` pipeline: its defaults, then ``base`` (a profile's
    values), then ``overrides``; checked as the stages will check them.

    Raises:
        ParameterError: an unknown name (the closest known names suggested), a value of the
            wrong type, or a value a stage's config refuses, with the fix.
    """
    known = pipeline_parameters(which)
    params = dict(known)
    params.update({k: v for k, v in (base or {}).items() if k in known})
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        hints = []
        for name in unknown:
            close = difflib.get_close_matches(name, list(known), n=1)
            hints.append(f"{name!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ParameterError(
            f"unknown pipeline parameter(s) {', '.join(hints)}. Fix: use one of "
            f"{', '.join(sorted(known))}"
        )
    for key, value in overrides.items():
        params[key] = _coerce(key, value, known[key])
    validate_params(params, target)
    if "grid" in params:  # after the checks, which then name the points as given
        params["grid"] = full_grid(params["grid"])
    return params


def full_grid(grid: Any) -> Any:
    """Each sweep grid point with every key of ``GRID_KEYS``: what a point leaves out of the
    loss (``kd_loss`` and its options) is DistillConfig's default. Not a list of dicts: as
    given (the checks then say what is wrong)."""
    if not isinstance(grid, list) or not all(isinstance(p, dict) for p in grid):
        return grid
    base = loss_defaults()
    return [{**base, **point} for point in grid]


def _coerce(key: str, value: Any, default: Any) -> Any:
    """Give ``value`` the type of the parameter's default (``1`` for a float is ``1.0``)."""
    kind = type(default)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is int and isinstance(value, float) and value.is_integer():
        return int(value)
    raise ParameterError(
        f"parameter {key}={value!r} must be a {kind.__name__} (default "
        f"{default!r}). Fix: pass e.g. --param {key}={default!r}"
    )


def _stage_config(cls: type, prefix: str, params: dict[str, Any], **extra: Any) -> Any:
    fields = cls.__dataclass_fields__  # type: ignore[attr-defined]
    values = {k: params[f"{prefix}{k}"] for k in fields if f"{prefix}{k}" in params}
    values.update(extra)
    return cls(**values)


def _training_configs(params: dict[str, Any]) -> dict[str, Any]:
    """The data split's and the two supervised trainings' configs (both pipelines have them)."""
    return {
        "split": SplitConfig(
            source=params["source"],
            val_fraction=params["val_fraction"],
            seed=params["split_seed"],
            train_per_class=params["train_per_class"],
            test_per_class=params["test_per_class"],
        ),
        "teacher": _stage_config(TeacherConfig, "teacher_", params),
        # The scratch student: the shared student_* settings, its own learning rate if set
        # (the sweep pipeline has no scratch student and no scratch_* parameter).
        "student": _stage_config(ScratchConfig, "", params).apply(
            _stage_config(StudentConfig, "student_", params)
        ),
    }


def stage_configs(params: dict[str, Any]) -> dict[str, Any]:
    """The config of every stage of the main pipeline, built from its parameters as the
    components build them: ``split``, ``teacher``, ``student``, ``distill``, ``evaluate``,
    ``gate``, ``export``, ``export_check_images`` and ``registry``."""
    return {
        **_training_configs(params),
        "distill": _stage_config(
            DistillConfig,
            "student_",
            params,
            temperature=params["temperature"],
            alpha=params["alpha"],
            teacher_views=params["teacher_views"],
            teacher_mixup_views=params["teacher_mixup_views"],
            **{k: params[k] for k in LOSS_KEYS},
        ),
        "evaluate": EvalConfig(
            batch_size=params["eval_batch_size"], latency_runs=params["latency_runs"]
        ),
        "gate": GateConfig(
            min_kd_gain=params["min_kd_gain"],
            min_accuracy=params["min_accuracy"],
            refuse_collapsed=params["refuse_collapsed"],
        ),
        "export": ExportConfig(
            check_images=params["export_check_images"],
            calibration_images=params["calibration_images"],
        ),
        "export_check_images": params["export_check_images"],
        "registry": registry_config(params),
    }


def registry_config(params: dict[str, Any]) -> RegistryConfig:
    """The Model Registry step's config, from the ``registry_*`` parameters."""
    return _stage_config(RegistryConfig, "registry_", params)


def check_teacher_model(value: str, target: str = "local") -> None:
    """``teacher_model`` must be something the target can read: on Vertex AI a ``gs://`` URI,
    on KFP a URI its launcher downloads; ``shipped`` and local paths only in local runs."""
    TeacherSourceConfig(model=value)
    if not value or target == "local":
        return
    if target == "vertex" and not value.startswith("gs://"):
        raise ParameterError(
            f"teacher_model={value!r} cannot be read by Vertex AI: it needs a gs:// URI. Fix: "
            "upload the teacher (gsutil cp teacher.keras gs://BUCKET/teachers/) and pass "
            "--param teacher_model=gs://BUCKET/teachers/teacher.keras"
            + (" (the shipped one is kd/teachers/fast_teacher.keras)" if value == "shipped" else "")
        )
    if target == "kfp" and "://" not in value:
        raise ParameterError(
            f"teacher_model={value!r} is not a URI the KFP launcher can download. Fix: upload "
            "the teacher to object storage and pass its gs://, s3:// or minio:// URI"
            + (" (the shipped one is kd/teachers/fast_teacher.keras)" if value == "shipped" else "")
        )


def check_teacher_exists(value: str) -> None:
    """A ``gs://`` teacher must exist before a remote run is submitted (a missing one would
    fail only at the run's import step). Other URIs are left to the target."""
    if not value.startswith("gs://"):
        return
    from kd.errors import DataError
    from kd.storage import gcs_exists

    try:
        found = gcs_exists(value)
    except DataError as exc:
        raise ParameterError(f"teacher_model={value}: {exc}") from exc
    if not found:
        raise ParameterError(
            f"teacher_model={value}: no such object. Fix: upload the teacher there "
            f"(gsutil cp teacher.keras {value}) or pass the URI of an existing .keras file or "
            "teacher Model folder"
        )


def check_global_batch(params: dict[str, Any], gpus: int, replicas: int = 1) -> None:
    """Each training step's ``batch_size`` (the global batch) must split evenly over the
    devices it trains on: its ``*_devices`` when set, else all its node(s) reserve,
    ``replicas`` x ``gpus`` (a CPU-only step counts as one device). With ``replicas`` > 1 a
    step trains on all its replicas' devices, so ``*_devices`` must be 0. The teacher's step
    is skipped when ``teacher_model`` brings one.

    Raises:
        ParameterError: the first step that does not, with the fix.
    """
    gpus = max(gpus, 1)
    devices = replicas * gpus
    where = f"{replicas} replicas x {gpus} GPU(s)" if replicas > 1 else f"{gpus} GPUs"
    for step in ("teacher", "student"):
        if step == "teacher" and params.get("teacher_model"):
            continue
        value, own = params.get(f"{step}_batch_size"), params.get(f"{step}_devices") or 0
        if replicas > 1 and own:
            raise ParameterError(
                f"invalid {step}_devices={own}: with {replicas} replicas each training step "
                f"trains on all their devices together ({where}). Fix: leave {step}_devices at "
                "0, or submit with --replicas 1"
            )
        n, on = (own, f"{own} devices") if own else (devices, f"{where} = {devices} devices")
        if isinstance(value, int) and (fix := uneven_batch(value, n)):
            raise ParameterError(
                f"invalid {step}_batch_size={value}: it is the global batch of a training step "
                f"on {on}, split evenly over them. Fix: pass --param {step}_batch_size=N with "
                f"N {fix}"
            )


def validate_params(params: dict[str, Any], target: str = "local") -> None:
    """Build every stage's config from the parameters: the same checks the stages make."""
    try:
        _validate(params, target)
    except ConfigError as exc:
        raise ParameterError(str(exc)) from exc


def _validate(params: dict[str, Any], target: str) -> None:
    if target not in TARGETS:
        raise ParameterError(f"unknown target {target!r}: choose one of {', '.join(TARGETS)}")
    check_teacher_model(params.get("teacher_model", ""), target)
    if params.get("registry_upload") and target != "vertex":
        raise ParameterError(
            "registry_upload=true registers the model in the Vertex AI Model Registry, which "
            "reads it from Cloud Storage. Fix: submit to Vertex AI (pipeline.py submit --target "
            "vertex), or leave registry_upload false"
        )
    if "grid" not in params:
        stage_configs(params)
        return
    # The sweep: its distillations take their temperature and alpha from the grid.
    _training_configs(params)
    grid = params["grid"]
    example = 'Fix: e.g. --param grid=\'[{"temperature": 4, "alpha": 0.1}]\''
    try:
        SweepConfig(grid=grid)
    except ConfigError as exc:
        raise ParameterError(f"parameter grid: {exc}. {example}") from exc
    for point in grid:  # the students' settings, with each point's temperature and alpha
        _stage_config(
            DistillConfig,
            "student_",
            params,
            **point,
            teacher_views=params["teacher_views"],
            teacher_mixup_views=params["teacher_mixup_views"],
        )
