"""The kd-pipeline: compile it for Vertex AI or Kubeflow Pipelines, or submit it.

    python pipeline.py compile [--output pipeline.yaml] [--target kfp|vertex]
                               [--accelerator T4] [--gpus 1] [--image REGISTRY/kd-pipeline:TAG]
    python pipeline.py submit --target kfp --host http://localhost:8080 [--param teacher_epochs=60]
    python pipeline.py submit --target vertex --project P --region us-central1 \\
                              --pipeline-root gs://BUCKET/root [--service-account SA]

Stages: data_split -> (train_teacher || train_student_scratch) -> distill_student -> evaluate
-> [gate passed] export_model. Every hyper-parameter and seed is a pipeline parameter whose
default comes from :mod:`kd.config` (defined once there). Compiling needs kfp only: nothing
on this path imports TensorFlow.
"""

# No `from __future__ import annotations`: KFP reads the pipeline signature's real types.

import argparse
import dataclasses
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

from kfp import compiler, dsl

from components.check_teacher import check_teacher
from components.data_split import data_split
from components.distill_student import distill_student
from components.evaluate import evaluate
from components.export_model import export_model
from components.image import IMAGE
from components.register_model import register_model
from components.select_best_student import select_best_student
from components.train_student_scratch import train_student_scratch
from components.train_teacher import train_teacher
from kd.config import (
    DEFAULT_VERTEX_ACCELERATOR,
    LOSS_KEYS,
    TARGETS,
    DistillConfig,
    EvalConfig,
    ExportConfig,
    GateConfig,
    RegistryConfig,
    ResourceConfig,
    ScratchConfig,
    SplitConfig,
    StudentConfig,
    SweepConfig,
    TeacherConfig,
    TeacherSourceConfig,
    TrainConfig,
    defaults,
)
from kd.errors import ConfigError

PIPELINE_NAME = "kd-cifar10"
SWEEP_NAME = "kd-cifar10-sweep"
PIPELINES = ("main", "sweep")
# Vertex AI machine-spec accelerator names, with short aliases.
VERTEX_ACCELERATORS = {
    "T4": "NVIDIA_TESLA_T4",
    "V100": "NVIDIA_TESLA_V100",
    "P100": "NVIDIA_TESLA_P100",
    "P4": "NVIDIA_TESLA_P4",
    "A100": "NVIDIA_TESLA_A100",
    "A100_80GB": "NVIDIA_A100_80GB",
    "L4": "NVIDIA_L4",
    "H100": "NVIDIA_H100_80GB",
    "H100_MEGA": "NVIDIA_H100_MEGA_80GB",
    "H200": "NVIDIA_H200_141GB",
}
KFP_GPU_RESOURCE = "nvidia.com/gpu"
# The machine type a multi-replica step's replicas get (--replicas R), by Vertex accelerator
# and GPUs per replica; --machine-type chooses another.
VERTEX_MACHINES: dict[str, dict[int, str]] = {
    "": {0: "n1-standard-8"},
    **{
        gpu: {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"}
        for gpu in ("NVIDIA_TESLA_T4", "NVIDIA_TESLA_P100", "NVIDIA_TESLA_P4")
    },
    "NVIDIA_TESLA_V100": {1: "n1-standard-8", 2: "n1-standard-16", 4: "n1-standard-32"}
    | {8: "n1-standard-64"},
    "NVIDIA_TESLA_A100": {n: f"a2-highgpu-{n}g" for n in (1, 2, 4, 8)} | {16: "a2-megagpu-16g"},
    "NVIDIA_A100_80GB": {n: f"a2-ultragpu-{n}g" for n in (1, 2, 4, 8)},
    "NVIDIA_L4": {1: "g2-standard-8", 2: "g2-standard-24", 4: "g2-standard-48"}
    | {8: "g2-standard-96"},
    "NVIDIA_H100_80GB": {n: f"a3-highgpu-{n}g" for n in (1, 2, 4, 8)},
    "NVIDIA_H100_MEGA_80GB": {8: "a3-megagpu-8g"},
    "NVIDIA_H200_141GB": {8: "a3-ultragpu-8g"},
}
# The executors of the training steps (what --replicas R runs as custom jobs).
TRAINING_EXECUTORS = ("exec-train-teacher", "exec-train-student-scratch", "exec-distill-student")
# Vertex AI Pipelines fills these in when the step runs.
PROJECT_PLACEHOLDER = "{{$.pipeline_google_cloud_project_id}}"
LOCATION_PLACEHOLDER = "{{$.pipeline_google_cloud_location}}"

_S, _T, _ST, _D = (
    defaults(SplitConfig),
    defaults(TeacherConfig),
    defaults(StudentConfig),
    defaults(DistillConfig),
)
_E, _G = defaults(EvalConfig), defaults(GateConfig)
_TS = defaults(TeacherSourceConfig)
_SC = defaults(ScratchConfig)
_X, _SW, _R = defaults(ExportConfig), defaults(SweepConfig), ResourceConfig()
_RG = defaults(RegistryConfig)
# The fields of a training stage (each a teacher_* and a student_* pipeline parameter).
TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


class Resources(ResourceConfig):
    """Compute of the steps: the fields and defaults of :class:`kd.config.ResourceConfig`, plus
    the accelerator type each target understands."""

    def accelerator_type(self) -> str | None:
        """The accelerator type string the target understands (None when no GPU)."""
        if self.gpus <= 0:
            return None
        if self.target == "kfp":
            return KFP_GPU_RESOURCE
        name = (self.accelerator or DEFAULT_VERTEX_ACCELERATOR).upper()
        if name in VERTEX_ACCELERATORS.values():
            return name
        if name not in VERTEX_ACCELERATORS:
            raise SystemExit(
                f"error: unknown --accelerator {self.accelerator!r} for Vertex AI: choose one of "
                f"{', '.join(VERTEX_ACCELERATORS)} or a Vertex name such as NVIDIA_L4"
            )
        return VERTEX_ACCELERATORS[name]

    def replica_machine(self) -> str:
        """Each replica's machine type for ``replicas`` > 1: ``machine_type``, or the one
        :data:`VERTEX_MACHINES` pairs with the accelerator and ``gpus``."""
        if self.machine_type:
            return self.machine_type
        kind = self.accelerator_type() or ""
        try:
            return VERTEX_MACHINES[kind][self.gpus]
        except KeyError:
            have = ", ".join(str(n) for n in VERTEX_MACHINES.get(kind, {})) or "none"
            raise SystemExit(
                f"error: no default machine type for {self.gpus} x {kind or 'no GPU'} per "
                f"replica (GPU counts with one: {have}). Fix: pass --gpus with one of those, or "
                "--machine-type TYPE (a Compute Engine machine type that has them)"
            ) from None


def _heavy(task: Any, res: Resources) -> Any:
    task.set_cpu_request(res.train_cpu).set_cpu_limit(res.train_cpu)
    task.set_memory_request(res.train_memory).set_memory_limit(res.train_memory)
    kind = res.accelerator_type()
    if kind:
        task.set_accelerator_type(kind).set_accelerator_limit(res.gpus)
    task.set_retry(num_retries=res.retries, backoff_duration=res.backoff, backoff_factor=2.0)
    return task


def _light(task: Any, res: Resources) -> Any:
    task.set_cpu_request(res.light_cpu).set_cpu_limit(res.light_cpu)
    task.set_memory_request(res.light_memory).set_memory_limit(res.light_memory)
    return task


def _train_args(prefix: str, values: dict[str, Any]) -> dict[str, Any]:
    return {f: values[f"{prefix}{f}"] for f in TRAIN_FIELDS}


def _teacher_model(v: dict[str, Any], data: dict[str, Any], res: Resources) -> Any:
    """The teacher Model channel: with ``teacher_model`` set, ``dsl.importer`` brings it in and
    ``check_teacher`` admits it (the training step does not run); else ``train_teacher``."""
    with dsl.If(v["teacher_model"] != "", name="bring-your-own-teacher"):
        imported = dsl.importer(
            artifact_uri=v["teacher_model"], artifact_class=dsl.Model, reimport=False
        )
        imported.set_display_name("import teacher")
        checked = _light(
            check_teacher(
                teacher=imported.output,
                validation=data["validation"],
                teacher_uri=v["teacher_model"],
                student_preset=v["student_preset"],
            ),
            res,
        )
        checked.set_display_name("check teacher")
    with dsl.Else(name="train-a-teacher"):
        trained = _heavy(train_teacher(**data, **_train_args("teacher_", v)), res)
        trained.set_display_name("train teacher")
    return dsl.OneOf(checked.outputs["model"], trained.outputs["model"])


def make_pipeline(res: Resources | None = None) -> Any:
    """Build the pipeline function for the given compute settings (one pipeline definition
    serves the compiler, the submitter and the local runner)."""
    res = res or Resources()

    @dsl.pipeline(
        name=PIPELINE_NAME,
        description="Knowledge distillation on CIFAR-10: teacher, distilled and "
        "scratch students, evaluation, quality gate and export.",
    )
    def kd_pipeline(
        source: str = _S["source"],
        val_fraction: float = _S["val_fraction"],
        split_seed: int = _S["seed"],
        train_per_class: int = _S["train_per_class"],
        test_per_class: int = _S["test_per_class"],
        teacher_model: str = _TS["model"],
        teacher_preset: str = _T["preset"],
        teacher_epochs: int = _T["epochs"],
        teacher_batch_size: int = _T["batch_size"],
        teacher_optimizer: str = _T["optimizer"],
        teacher_learning_rate: float = _T["learning_rate"],
        teacher_momentum: float = _T["momentum"],
        teacher_weight_decay: float = _T["weight_decay"],
        teacher_schedule: str = _T["schedule"],
        teacher_warmup_epochs: int = _T["warmup_epochs"],
        teacher_clipnorm: float = _T["clipnorm"],
        teacher_label_smoothing: float = _T["label_smoothing"],
        teacher_augment: bool = _T["augment"],
        teacher_mixed_precision: bool = _T["mixed_precision"],
        teacher_early_stopping_patience: int = _T["early_stopping_patience"],
        teacher_divergence_check_epoch: int = _T["divergence_check_epoch"],
        teacher_seed: int = _T["seed"],
        teacher_jit_compile: bool = _T["jit_compile"],
        teacher_devices: int = _T["devices"],
        student_preset: str = _ST["preset"],
        student_epochs: int = _ST["epochs"],
        student_batch_size: int = _ST["batch_size"],
        student_optimizer: str = _ST["optimizer"],
        student_learning_rate: float = _ST["learning_rate"],
        student_momentum: float = _ST["momentum"],
        student_weight_decay: float = _ST["weight_decay"],
        student_schedule: str = _ST["schedule"],
        student_warmup_epochs: int = _ST["warmup_epochs"],
        student_clipnorm: float = _ST["clipnorm"],
        student_label_smoothing: float = _ST["label_smoothing"],
        student_augment: bool = _ST["augment"],
        student_mixed_precision: bool = _ST["mixed_precision"],
        student_early_stopping_patience: int = _ST["early_stopping_patience"],
        student_divergence_check_epoch: int = _ST["divergence_check_epoch"],
        student_seed: int = _ST["seed"],
        student_jit_compile: bool = _ST["jit_compile"],
        student_devices: int = _ST["devices"],
        scratch_learning_rate: float = _SC["scratch_learning_rate"],
        temperature: float = _D["temperature"],
        alpha: float = _D["alpha"],
        teacher_views: int = _D["teacher_views"],
        teacher_mixup_views: int = _D["teacher_mixup_views"],
        kd_loss: str = _D["kd_loss"],
        logit_standardization: bool = _D["logit_standardization"],
        dkd_alpha: float = _D["dkd_alpha"],
        dkd_beta: float = _D["dkd_beta"],
        dist_beta: float = _D["dist_beta"],
        dist_gamma: float = _D["dist_gamma"],
        feature_weight: float = _D["feature_weight"],
        teacher_feature_layer: str = _D["teacher_feature_layer"],
        student_feature_layer: str = _D["student_feature_layer"],
        eval_batch_size: int = _E["batch_size"],
        latency_runs: int = _E["latency_runs"],
        min_kd_gain: float = _G["min_kd_gain"],
        min_accuracy: float = _G["min_accuracy"],
        refuse_collapsed: bool = _G["refuse_collapsed"],
        export_check_images: int = _X["check_images"],
        calibration_images: int = _X["calibration_images"],
        registry_upload: bool = _RG["upload"],
        registry_serving_image: str = _RG["serving_image"],
        registry_project: str = _RG["project"],
        registry_location: str = _RG["location"],
        registry_display_name: str = _RG["display_name"],
        registry_parent_model: str = _RG["parent_model"],
        registry_version_aliases: str = _RG["version_aliases"],
        registry_api_endpoint: str = _RG["api_endpoint"],
        registry_deploy_endpoint: str = _RG["deploy_endpoint"],
        registry_machine_type: str = _RG["machine_type"],
        registry_accelerator_type: str = _RG["accelerator_type"],
        registry_accelerator_count: int = _RG["accelerator_count"],
        registry_min_replicas: int = _RG["min_replicas"],
        registry_max_replicas: int = _RG["max_replicas"],
    ):
        """Teacher, distilled student and scratch student on CIFAR-10, evaluated side by side.

        The ``student_*`` settings apply to both students (distilled and scratch) so that the
        comparison is fair, except that ``scratch_learning_rate`` (when > 0) replaces the
        scratch student's learning rate; ``temperature``, ``alpha``, ``teacher_views``,
        ``teacher_mixup_views`` and the loss
        (``kd_loss``, ``logit_standardization`` and its weights) only to distillation.
        """
        v = dict(locals())
        split = _light(
            data_split(
                source=source,
                val_fraction=val_fraction,
                split_seed=split_seed,
                train_per_class=train_per_class,
                test_per_class=test_per_class,
            ),
            res,
        )
        split.set_display_name("data split")
        data = {"train": split.outputs["train"], "validation": split.outputs["validation"]}
        teacher = _teacher_model(v, data, res)
        scratch = _heavy(
            train_student_scratch(
                **data,
                **_train_args("student_", v),
                scratch_learning_rate=scratch_learning_rate,
            ),
            res,
        )
        scratch.set_display_name("train student from scratch")
        distilled = _heavy(
            distill_student(
                teacher=teacher,
                **data,
                **_train_args("student_", v),
                temperature=temperature,
                alpha=alpha,
                teacher_views=teacher_views,
                teacher_mixup_views=teacher_mixup_views,
                **{k: v[k] for k in LOSS_KEYS},
            ),
            res,
        )
        distilled.set_display_name("distill student")
        ev = _light(
            evaluate(
                teacher=teacher,
                student_distilled=distilled.outputs["model"],
                student_scratch=scratch.outputs["model"],
                test=split.outputs["test"],
                validation=split.outputs["validation"],
                min_kd_gain=min_kd_gain,
                min_accuracy=min_accuracy,
                refuse_collapsed=refuse_collapsed,
                batch_size=eval_batch_size,
                latency_runs=latency_runs,
            ),
            res,
        )
        ev.set_display_name("evaluate")
        with dsl.If(ev.outputs["Output"] == True, name="quality-gate"):  # noqa: E712
            export = _light(
                export_model(
                    student=distilled.outputs["model"],
                    train=split.outputs["train"],
                    test=split.outputs["test"],
                    check_images=export_check_images,
                    calibration_images=calibration_images,
                ),
                res,
            )
            export.set_display_name("export blessed student")
            with dsl.If(registry_upload == True, name="model-registry"):  # noqa: E712
                register = _light(
                    register_model(
                        blessed=export.outputs["blessed"],
                        metrics=ev.outputs["metrics"],
                        **{k: v[k] for k in v if k.startswith("registry_")},
                    ),
                    res,
                )
                register.set_display_name("register in Vertex AI Model Registry")

    return kd_pipeline


def make_sweep_pipeline(res: Resources | None = None) -> Any:
    """The temperature x alpha sweep: one distillation per grid point, each on its own
    (GPU) node through ``dsl.ParallelFor``, fanned in with ``dsl.Collected`` to a step that
    picks the best student by validation accuracy and reports the heatmap."""
    res = res or Resources()

    @dsl.pipeline(
        name=SWEEP_NAME,
        description="Distillation over a grid of temperatures and alphas; the best student "
        "by validation accuracy, with a heatmap and its test accuracy.",
    )
    def kd_sweep(
        grid: list = _SW["grid"],
        source: str = _S["source"],
        val_fraction: float = _S["val_fraction"],
        split_seed: int = _S["seed"],
        train_per_class: int = _S["train_per_class"],
        test_per_class: int = _S["test_per_class"],
        teacher_model: str = _TS["model"],
        teacher_preset: str = _T["preset"],
        teacher_epochs: int = _T["epochs"],
        teacher_batch_size: int = _T["batch_size"],
        teacher_optimizer: str = _T["optimizer"],
        teacher_learning_rate: float = _T["learning_rate"],
        teacher_momentum: float = _T["momentum"],
        teacher_weight_decay: float = _T["weight_decay"],
        teacher_schedule: str = _T["schedule"],
        teacher_warmup_epochs: int = _T["warmup_epochs"],
        teacher_clipnorm: float = _T["clipnorm"],
        teacher_label_smoothing: float = _T["label_smoothing"],
        teacher_augment: bool = _T["augment"],
        teacher_mixed_precision: bool = _T["mixed_precision"],
        teacher_early_stopping_patience: int = _T["early_stopping_patience"],
        teacher_divergence_check_epoch: int = _T["divergence_check_epoch"],
        teacher_seed: int = _T["seed"],
        teacher_jit_compile: bool = _T["jit_compile"],
        teacher_devices: int = _T["devices"],
        student_preset: str = _ST["preset"],
        student_epochs: int = _ST["epochs"],
        student_batch_size: int = _ST["batch_size"],
        student_optimizer: str = _ST["optimizer"],
        student_learning_rate: float = _ST["learning_rate"],
        student_momentum: float = _ST["momentum"],
        student_weight_decay: float = _ST["weight_decay"],
        student_schedule: str = _ST["schedule"],
        student_warmup_epochs: int = _ST["warmup_epochs"],
        student_clipnorm: float = _ST["clipnorm"],
        student_label_smoothing: float = _ST["label_smoothing"],
        student_augment: bool = _ST["augment"],
        student_mixed_precision: bool = _ST["mixed_precision"],
        student_early_stopping_patience: int = _ST["early_stopping_patience"],
        student_divergence_check_epoch: int = _ST["divergence_check_epoch"],
        student_seed: int = _ST["seed"],
        student_jit_compile: bool = _ST["jit_compile"],
        student_devices: int = _ST["devices"],
        teacher_views: int = _D["teacher_views"],
        teacher_mixup_views: int = _D["teacher_mixup_views"],
    ):
        """``grid`` is a list of ``{"temperature": T, "alpha": a}``, each optionally with its
        loss (``kd_loss``, ``logit_standardization`` and the weights; the compiled default
        grid carries them all, and ``parameters.resolve`` fills in what a point leaves out);
        the ``student_*`` settings, ``teacher_views`` and ``teacher_mixup_views`` apply to every
        branch."""
        v = dict(locals())
        split = _light(
            data_split(
                source=source,
                val_fraction=val_fraction,
                split_seed=split_seed,
                train_per_class=train_per_class,
                test_per_class=test_per_class,
            ),
            res,
        )
        data = {"train": split.outputs["train"], "validation": split.outputs["validation"]}
        teacher = _teacher_model(v, data, res)
        with dsl.ParallelFor(grid, name="t-alpha-grid") as point:
            branch = _heavy(
                distill_student(
                    teacher=teacher,
                    **data,
                    **_train_args("student_", v),
                    temperature=point.temperature,
                    alpha=point.alpha,
                    teacher_views=teacher_views,
                    teacher_mixup_views=teacher_mixup_views,
                    # Every point carries its loss: parameters.resolve fills in the defaults.
                    **{k: getattr(point, k) for k in LOSS_KEYS},
                ),
                res,
            )
        best = _light(
            select_best_student(
                students=dsl.Collected(branch.outputs["model"]), test=split.outputs["test"]
            ),
            res,
        )
        best.set_display_name("select best student (validation accuracy)")

    return kd_sweep


def compile_pipeline(
    output: str | os.PathLike[str] = "pipeline.yaml",
    *,
    res: Resources | None = None,
    image: str = IMAGE,
    enable_caching: bool = True,
    which: str = "main",
    service_account: str = "",
    place: tuple[str, str] = ("", ""),
) -> Path:
    """Compile the ``main`` or ``sweep`` pipeline to ``output`` (YAML); ``image`` replaces the
    default image name. With ``res.replicas`` > 1 the training steps are custom jobs
    (:func:`multi_replica_steps`), run as ``service_account`` (empty: Vertex AI's default) in
    ``place`` (project, location; empty: filled in by Vertex AI when the step runs)."""
    out = Path(output)
    fn = make_sweep_pipeline(res) if which == "sweep" else make_pipeline(res)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_yaml = Path(tmp) / "pipeline.yaml"
        compiler.Compiler().compile(fn, str(tmp_yaml))
        text = tmp_yaml.read_text()
        if image != IMAGE:
            text = text.replace(f"image: {IMAGE}\n", f"image: {image}\n")
        if not enable_caching:
            text = text.replace("enableCache: true", "enableCache: false")
        if res is not None and res.replicas > 1:
            text = multi_replica_steps(text, res, image, service_account, place)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp_out = out.with_name(out.name + ".tmp")
        tmp_out.write_text(text)
        os.replace(tmp_out, out)
    return out


def multi_replica_steps(
    text: str,
    res: Resources,
    image: str,
    service_account: str = "",
    place: tuple[str, str] = ("", ""),
) -> str:
    """The compiled pipeline ``text`` with each training step's container replaced by the
    launcher of :mod:`kd.custom_job`: it runs the step as a Vertex AI custom job of
    ``res.replicas`` replicas (each ``res.replica_machine()`` with ``res.gpus`` GPUs of the
    accelerator), itself on a light node. The step's own container (image, command, args)
    goes into its :class:`kd.custom_job.ReplicaSpec`, unchanged but for the executor input's
    placeholder. What ``create_custom_training_job_from_component`` of
    google-cloud-pipeline-components does; that package does not co-install here."""
    import copy

    import yaml  # type: ignore[import-untyped]

    from kd.custom_job import EXECUTOR_INPUT, ReplicaSpec

    docs = list(yaml.safe_load_all(text))
    executors = docs[0]["deploymentSpec"]["executors"]
    light = executors["exec-data-split"]["container"].get("resources", {})
    machine, kind = res.replica_machine(), res.accelerator_type() or ""
    for name in TRAINING_EXECUTORS:
        if name not in executors:
            continue
        step = executors[name]["container"]
        spec = ReplicaSpec(
            replicas=res.replicas,
            machine_type=machine,
            image=step["image"],
            command=list(step["command"]),
            args=[EXECUTOR_INPUT if a == "{{$}}" else a for a in step["args"]],
            accelerator_type=kind,
            accelerator_count=res.gpus if kind else 0,
            service_account=service_account,
            display_name=f"kd-pipeline {name[len('exec-') :]}",
        ).to_json()
        if "{{$" in spec:
            raise SystemExit(f"error: step {name} has a placeholder the launcher cannot pass")
        executors[name]["container"] = {
            "image": step["image"],
            "command": ["python3", "-m", "kd.custom_job"],
            "args": [
                *("--executor-input", "{{$}}", "--spec", spec),
                *("--project", place[0] or PROJECT_PLACEHOLDER),
                *("--location", place[1] or LOCATION_PLACEHOLDER),
            ],
            "resources": copy.deepcopy(light),  # shared, YAML would write an alias
        }
    return yaml.safe_dump_all(docs, sort_keys=False)


def _add_compile_options(p: argparse.ArgumentParser, *, for_submit: bool = False) -> None:
    p.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default="main",
        help="main: teacher, students, evaluation, gate, export; sweep: "
        "distillation over a temperature x alpha grid in parallel (default: main)",
    )
    # `submit` has its own --target and --no-cache (submit.add_submit_arguments).
    if not for_submit:
        p.add_argument(
            "--target",
            choices=TARGETS,
            default=_R.target,
            help="where the pipeline runs; sets how GPUs are requested (default: %(default)s)",
        )
    p.add_argument(
        "--accelerator",
        default=None,
        help="GPU type of the training steps. Vertex: "
        + ", ".join(VERTEX_ACCELERATORS)
        + " or a Vertex name (NVIDIA_L4); KFP: ignored, GPUs are requested as "
        f"nvidia.com/gpu (default: {DEFAULT_VERTEX_ACCELERATOR} on Vertex when --gpus > 0)",
    )
    p.add_argument(
        "--gpus",
        type=int,
        default=_R.gpus,
        help="GPUs per training step (default: %(default)s, CPU only)",
    )
    p.add_argument(
        "--replicas",
        type=int,
        default=_R.replicas,
        help="machines each training step trains on together (Vertex AI only: a custom job "
        "of R replicas, each with --gpus GPUs; batch sizes are then global over all of them; "
        "default: %(default)s)",
    )
    p.add_argument(
        "--machine-type",
        default=_R.machine_type,
        help="machine type of each replica with --replicas > 1 (default: paired with "
        "--accelerator and --gpus, e.g. a2-highgpu-1g for 1 x A100)",
    )
    p.add_argument(
        "--train-cpu",
        default=_R.train_cpu,
        help="CPU cores per training step (default: %(default)s)",
    )
    p.add_argument(
        "--train-memory",
        default=_R.train_memory,
        help="memory per training step (default: %(default)s)",
    )
    p.add_argument(
        "--retries",
        type=int,
        default=_R.retries,
        help="retries of a failed training step; retries resume from the last "
        "checkpointed epoch (default: %(default)s)",
    )
    p.add_argument(
        "--image",
        default=IMAGE,
        help=f"container image of every step (default: {IMAGE}, the local build; "
        "push it to a registry for a cluster)",
    )
    if not for_submit:
        p.add_argument(
            "--no-cache",
            action="store_true",
            help="disable step caching in the compiled pipeline (default: caching on)",
        )


def _resources(args: argparse.Namespace) -> Resources:
    if args.gpus < 0:
        raise SystemExit("error: --gpus must be >= 0")
    try:
        res = Resources(
            target=args.target,
            accelerator=args.accelerator,
            gpus=args.gpus,
            train_cpu=args.train_cpu,
            train_memory=args.train_memory,
            retries=args.retries,
            replicas=args.replicas,
            machine_type=args.machine_type,
        )
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from exc
    if res.replicas > 1:
        res.replica_machine()  # a missing machine type is an error before compiling
    return res


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring)."""
    ap = argparse.ArgumentParser(
        prog="pipeline.py",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    c = sub.add_parser("compile", help="compile the pipeline to YAML")
    c.add_argument(
        "--output", default="pipeline.yaml", help="where the YAML goes (default: pipeline.yaml)"
    )
    _add_compile_options(c)
    s = sub.add_parser("submit", help="compile, then submit to a KFP endpoint or Vertex AI")
    import submit

    submit.add_submit_arguments(s)
    _add_compile_options(s, for_submit=True)
    args = ap.parse_args(argv)
    res = _resources(args)
    if args.command == "submit":
        import parameters

        given = {key: submit._param_value(value) for key, value in (args.param or [])}
        if (
            given.get("registry_upload") is True
            and args.target == "vertex"
            and (args.pipeline == "main")
        ):
            # The Model Registry of the run's own project and region, unless told otherwise.
            for key, flag in (("registry_project", "project"), ("registry_location", "region")):
                if not given.get(key) and getattr(args, flag, None):
                    given[key] = getattr(args, flag)
                    args.param = [*(args.param or []), (key, given[key])]
        try:  # every parameter checked before any network call
            resolved = parameters.resolve(given, args.pipeline, target=args.target)
            parameters.check_global_batch(resolved, res.gpus, res.replicas)
            parameters.check_teacher_exists(resolved.get("teacher_model", ""))
        except parameters.ParameterError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    if args.command == "compile":
        import parameters

        try:  # a default that does not split over the steps' devices: its run must set it
            parameters.check_global_batch(
                parameters.resolve({}, args.pipeline), res.gpus, res.replicas
            )
        except parameters.ParameterError as exc:
            print(
                f"warning: with the compiled defaults the run would stop: {exc} (at "
                "submission, or in the Vertex AI console's run parameters)",
                file=sys.stderr,
            )
        path = compile_pipeline(
            args.output,
            res=res,
            image=args.image,
            enable_caching=not args.no_cache,
            which=args.pipeline,
        )
        name = SWEEP_NAME if args.pipeline == "sweep" else PIPELINE_NAME
        print(f"compiled {name} to {path}")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        path = compile_pipeline(
            Path(tmp) / "pipeline.yaml",
            res=res,
            image=args.image,
            enable_caching=not args.no_cache,
            which=args.pipeline,
            service_account=getattr(args, "service_account", None) or "",
            place=(getattr(args, "project", None) or "", getattr(args, "region", None) or ""),
        )
        try:
            submit.submit_from_args(args, str(path))
        except submit.SubmitError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
