"""``python -m local_runner {run,inspect}``: run the pipeline locally and inspect runs.

python -m local_runner run [--runner docker|subprocess] [--data sample|keras|PATH|gs://...]
                           [--teacher shipped|PATH|gs://... | --train-teacher]
                           [--profile demo|full] [--param KEY=VALUE ...]
python -m local_runner inspect [RUN] [--pipeline-root runs | gs://BUCKET/ROOT] [--json]
python -m local_runner predict MODEL INPUT [INPUT ...] [--pipeline-root runs] [--top-k 3]
                               [--json | --csv PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # as the image sets it; before TensorFlow loads

from components.image import IMAGE
from kd.config import PRESETS
from local_runner.run import DEFAULT_PIPELINE_ROOT, PROFILES, RunnerError, parse_value


def _kv(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE (e.g. teacher_epochs=30)")
    key, value = text.split("=", 1)
    return key.strip(), parse_value(value)


def build_parser() -> argparse.ArgumentParser:
    """The command line; every option's help names its default and units."""
    ap = argparse.ArgumentParser(
        prog="python -m local_runner",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "run",
        help="run the pipeline locally through kfp.local",
        description="Run the pipeline's components locally. Checks parameters, "
        "data, Docker and the image before any stage starts.",
    )
    # The defaults these options name are the configs' (kd.config), as the pipeline's are.
    from kd.config import ResourceConfig, SplitConfig, StudentConfig, TeacherConfig
    from pipeline import PIPELINES  # kfp and the components: no TensorFlow

    def demo_axis(key: str) -> str:  # the demo profile's grid values of one axis: "{2, 5}"
        values = sorted({point[key] for point in PROFILES["demo"]["grid"]})
        return "{" + ", ".join(f"{v:g}" for v in values) + "}"

    r.add_argument(
        "--pipeline",
        choices=PIPELINES,
        default=PIPELINES[0],
        help="main: teacher, students, evaluation, gate, export; sweep: distillation over the "
        f"temperature x alpha grid (--param grid=JSON; demo: T in {demo_axis('temperature')} "
        f"x alpha in {demo_axis('alpha')}) (default: %(default)s)",
    )
    r.add_argument(
        "--runner",
        choices=("docker", "subprocess"),
        default="docker",
        help="docker: each stage in its own container, networking off; subprocess: "
        "in this Python environment, no Docker (default: %(default)s)",
    )
    r.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="demo",
        help="demo: the shipped sample, a few minutes on 2 CPU cores; full: the "
        "pipeline defaults, for a GPU machine (default: %(default)s)",
    )
    r.add_argument(
        "--data",
        default=None,
        help="data source: sample (shipped, offline), keras (download), a local "
        "path (python/binary archive or folder, npz) or gs://... (default: the "
        "profile's, sample)",
    )
    r.add_argument(
        "--teacher",
        default=None,
        metavar="PATH",
        help="the trained teacher to distill from: a .keras file, a teacher Model folder of an "
        "earlier run, a gs:// URI, or 'shipped' (the teacher shipped in kd/teachers/) "
        "(default: the profile's; demo: shipped, full: train one)",
    )
    r.add_argument(
        "--train-teacher",
        action="store_true",
        help="train the teacher in this run instead of bringing one (default: off)",
    )
    r.add_argument(
        "--preset",
        choices=PRESETS,
        default=None,
        help=f"model preset of teacher and students (default: {TeacherConfig.preset})",
    )
    r.add_argument(
        "--teacher-epochs",
        type=int,
        default=None,
        help="teacher epochs (default: the profile's; demo "
        f"{PROFILES['demo']['teacher_epochs']}, full {TeacherConfig.epochs})",
    )
    r.add_argument(
        "--student-epochs",
        type=int,
        default=None,
        help="epochs of both students (default: the profile's; demo "
        f"{PROFILES['demo']['student_epochs']}, full {StudentConfig.epochs})",
    )
    r.add_argument(
        "--seed",
        type=int,
        default=None,
        help=f"one seed for the split and all training (default: {SplitConfig.seed})",
    )
    r.add_argument(
        "--train-per-class",
        type=int,
        default=None,
        help=f"training images per class, 0 = all (default: {SplitConfig.train_per_class})",
    )
    r.add_argument(
        "--test-per-class",
        type=int,
        default=None,
        help=f"test images per class, 0 = all (default: {SplitConfig.test_per_class})",
    )
    r.add_argument(
        "--param",
        action="append",
        type=_kv,
        metavar="KEY=VALUE",
        help="any pipeline parameter, e.g. --param temperature=4 --param alpha=0.2 "
        "(see pipeline.py; repeatable)",
    )
    r.add_argument(
        "--pipeline-root",
        default=DEFAULT_PIPELINE_ROOT,
        help=f"where runs and artifacts go (default: {DEFAULT_PIPELINE_ROOT}/)",
    )
    r.add_argument("--image", default=IMAGE, help=f"component image (default: {IMAGE})")
    r.add_argument(
        "--build",
        choices=("auto", "online", "offline", "never"),
        default="auto",
        help="how to get the image: online (docker build from the public base "
        "image), offline (no registry: local base image + wheelhouse), never (must "
        "exist), auto (an image with unchanged sources is reused however it was built; "
        "else offline where this machine built offline before, e.g. after make demo, online "
        "where the public base image is here or a registry answers, offline otherwise) "
        "(default: %(default)s)",
    )
    r.add_argument(
        "--gpus",
        default=None,
        help="GPUs passed to each container: a number or 'all' (default: none)",
    )
    r.add_argument(
        "--retries",
        type=int,
        default=ResourceConfig.retries,
        help="retries of a failed training stage, resuming from its last epoch "
        "(default: %(default)s)",
    )
    r.add_argument(
        "--verbose",
        action="store_true",
        help="also show kfp.local's per-task output on the terminal (default: it goes to the "
        "run's log file, run.log)",
    )
    r.add_argument(
        "--cache",
        action="store_true",
        help="reuse the outputs of identical tasks of earlier --cache runs on this pipeline "
        "root (kfp.local's cache: same component code, image, parameters and inputs); a "
        "reused stage says so and inspect shows it REUSED, with the run it came from "
        "(default: off)",
    )
    r.add_argument(
        "--resume",
        metavar="RUN",
        default=None,
        help="continue a run that was cancelled, interrupted or failed, with its own "
        "parameters: its finished stages are reused, the stage that was stopped resumes "
        "from its last finished epoch (default: a new run)",
    )

    i = sub.add_parser("inspect", help="list runs, or show one run's tasks and artifacts")
    i.add_argument(
        "run", nargs="?", help="run id, a unique prefix, or 'latest' (default: list all runs)"
    )
    i.add_argument(
        "--pipeline-root",
        default=DEFAULT_PIPELINE_ROOT,
        help="pipeline root: a local folder or gs://BUCKET/ROOT written by KFP or "
        f"Vertex AI (default: {DEFAULT_PIPELINE_ROOT}/)",
    )
    i.add_argument(
        "--spec",
        default=None,
        help="compiled pipeline YAML, for exact artifact types (default: the one "
        "the local runner recorded, if any)",
    )
    i.add_argument("--json", action="store_true", help="print JSON (default: text)")

    from kd.predict import DEFAULT_FIT, FITS, TOP_K  # numpy only, no TensorFlow

    p = sub.add_parser(
        "predict",
        help="classify images with a trained model",
        description="Classify images with a trained model: the top-k CIFAR-10 classes and "
        "their softmax probabilities. Images of any size and mode are converted to RGB and "
        "resized to 32x32 (see kd.predict); the model does its own preprocessing.",
    )
    p.add_argument(
        "model",
        help="a .keras/.tflite/.onnx file, a model folder, a gs:// URI of either, or RUN:NAME / "
        "NAME (latest run) with NAME one of teacher, student_distilled, student_scratch, "
        "blessed",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="PNG/JPEG files, folders of them, or .npz files with x (and y) or x_test",
    )
    p.add_argument(
        "--pipeline-root",
        default=DEFAULT_PIPELINE_ROOT,
        help="pipeline root for RUN:NAME models: a local folder or gs://BUCKET/ROOT "
        f"(default: {DEFAULT_PIPELINE_ROOT}/)",
    )
    p.add_argument(
        "--top-k",
        type=int,
        default=TOP_K,
        help="classes listed per image, 1-10 (default: %(default)s)",
    )
    p.add_argument(
        "--fit",
        choices=FITS,
        default=DEFAULT_FIT,
        help="non-square images: crop the centre square, or stretch (default: %(default)s)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print a JSON list (default: a table)")
    out.add_argument("--csv", metavar="PATH", help="write the predictions to a CSV file")
    return ap


def _top_k_text(row: dict[str, Any]) -> str:
    return " ".join(f"{t['class']}:{t['probability']:.3f}" for t in row["top_k"])


def predict_table(rows: list[dict[str, Any]]) -> str:
    """The predictions as an aligned text table (input, top-1 class, probability, top-k)."""
    labelled = any("label" in r for r in rows)
    header = ["INPUT", "CLASS", "PROB", "TOP-K"] + (["LABEL"] if labelled else [])
    body = [
        [r["input"], r["class"], f"{r['probability']:.3f}", _top_k_text(r)]
        + ([str(r.get("label_class") or r.get("label", "-"))] if labelled else [])
        for r in rows
    ]
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [header, *body]
    ]
    if labelled:
        known = [r for r in rows if "label" in r]
        correct = sum(r["index"] == r["label"] for r in known)
        lines.append(f"accuracy {correct / len(known):.4f} ({correct}/{len(known)} labelled)")
    return "\n".join(lines)


def predict_csv(rows: list[dict[str, Any]], path: str) -> None:
    """Write the predictions to ``path`` atomically: input, class, probability, then class and
    probability per rank (``top1_class``, ``top1_probability``, ...), label, model."""
    import csv
    import io

    from kd.storage import write_text_atomic

    k = max((len(r["top_k"]) for r in rows), default=0)
    labelled = any("label" in r for r in rows)
    header = ["input", "class", "index", "probability"]
    for i in range(1, k + 1):
        header += [f"top{i}_class", f"top{i}_probability"]
    header += (["label", "label_class"] if labelled else []) + ["model"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for r in rows:
        line = [r["input"], r["class"], r["index"], f"{r['probability']:.6f}"]
        for t in r["top_k"]:
            line += [t["class"], f"{t['probability']:.6f}"]
        if labelled:
            line += [r.get("label", ""), r.get("label_class", "")]
        w.writerow([*line, r["model"]])
    write_text_atomic(path, buf.getvalue())


def _quiet_tensorflow_import() -> None:
    """Import TensorFlow and Keras with stderr (file descriptor 2) sent to /dev/null.

    TF 2.21 logs oneDNN and CPU-feature INFO lines through absl before its logging is set up,
    which TF_CPP_MIN_LOG_LEVEL does not silence; the ``predict`` command keeps stderr for its
    own one-line errors. An import error is still raised (after stderr is restored).
    """
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's later C++ logs
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            try:
                import keras  # noqa: F401
                import tensorflow  # noqa: F401
            finally:
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def predict_command(args: argparse.Namespace) -> int:
    """``predict``: classify the inputs; a table, JSON, or a CSV file."""
    from kd.predict import load_inputs, predict_files

    inputs = load_inputs(args.inputs, args.fit)  # bad inputs fail before TensorFlow loads
    _quiet_tensorflow_import()
    rows = predict_files(args.model, inputs, args.top_k, args.pipeline_root)
    if args.csv:
        predict_csv(rows, args.csv)
        print(f"wrote {len(rows)} predictions to {args.csv}")
    elif args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(f"model: {rows[0]['model']}")
        print(predict_table(rows))
    return 0


def inspect_command(args: argparse.Namespace) -> int:
    """``inspect``: list runs newest first, or describe one."""
    from kd import runs

    if args.run:
        result: Any = runs.describe_run(args.pipeline_root, args.run, pipeline_spec=args.spec)
        text = runs.format_run(result)
    else:
        result = runs.list_runs(args.pipeline_root)
        text = runs.format_runs(result)
    print(json.dumps(result, indent=2, default=str) if args.json else text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: one clear line and a non-zero exit on any bad input."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from local_runner.run import run

            return run(args)
        if args.command == "predict":
            return predict_command(args)
        return inspect_command(args)
    except BrokenPipeError:
        # The reader went away (``inspect ... | head``): stop quietly, as a Unix tool killed by
        # SIGPIPE would, and keep Python from complaining again when it flushes at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except (RunnerError, Exception) as exc:
        from kd.errors import KDError

        if isinstance(exc, RunnerError | KDError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
