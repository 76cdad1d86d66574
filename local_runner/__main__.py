"""``python -m local_runner {run,inspect}``: run the pipeline locally and inspect runs.

python -m local_runner run [--runner docker|subprocess] [--data sample|keras|PATH|gs://...]
                           [--profile demo|full] [--param KEY=VALUE ...]
python -m local_runner inspect [RUN] [--root runs | gs://BUCKET/ROOT] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from components.image import IMAGE
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
    r.add_argument(
        "--runner",
        choices=("docker", "subprocess"),
        default="docker",
        help="docker: each stage in its own container, networking off; subprocess: "
        "in this Python environment, no Docker (default: docker)",
    )
    r.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="demo",
        help="demo: the shipped sample, a few minutes on 2 CPU cores; full: the "
        "pipeline defaults, for a GPU machine (default: demo)",
    )
    r.add_argument(
        "--data",
        default=None,
        help="data source: sample (shipped, offline), keras (download), a local "
        "path (python/binary archive or folder, npz) or gs://... (default: the "
        "profile's, sample)",
    )
    r.add_argument(
        "--preset",
        choices=("seed", "resnet"),
        default=None,
        help="model preset of teacher and students (default: seed)",
    )
    r.add_argument(
        "--teacher-epochs",
        type=int,
        default=None,
        help="teacher epochs (default: the profile's; demo 8, full 60)",
    )
    r.add_argument(
        "--student-epochs",
        type=int,
        default=None,
        help="epochs of both students (default: the profile's; demo 15, full 60)",
    )
    r.add_argument(
        "--seed",
        type=int,
        default=None,
        help="one seed for the split and all training (default: 42)",
    )
    r.add_argument(
        "--train-per-class",
        type=int,
        default=None,
        help="training images per class, 0 = all (default: 0)",
    )
    r.add_argument(
        "--test-per-class",
        type=int,
        default=None,
        help="test images per class, 0 = all (default: 0)",
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
        choices=("online", "offline", "never"),
        default="online",
        help="how to get the image: online (docker build from the public base "
        "image), offline (no registry: local base image + wheelhouse), never (must "
        "exist); an up-to-date image is reused (default: online)",
    )
    r.add_argument(
        "--gpus",
        default=None,
        help="GPUs passed to each container: a number or 'all' (default: none)",
    )
    r.add_argument(
        "--retries",
        type=int,
        default=2,
        help="retries of a failed training stage, resuming from its last epoch (default: 2)",
    )
    r.add_argument(
        "--cache",
        action="store_true",
        help="reuse outputs of identical earlier tasks (kfp.local cache; default: off)",
    )

    i = sub.add_parser("inspect", help="list runs, or show one run's tasks and artifacts")
    i.add_argument(
        "run", nargs="?", help="run id, a unique prefix, or 'latest' (default: list all runs)"
    )
    i.add_argument(
        "--root",
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
    return ap


def inspect_command(args: argparse.Namespace) -> int:
    """``inspect``: list runs newest first, or describe one."""
    from local_runner import inspect as ins

    if args.run:
        result: Any = ins.describe_run(args.root, args.run, pipeline_spec=args.spec)
        text = ins.format_run(result)
    else:
        result = ins.list_runs(args.root)
        text = ins.format_runs(result)
    print(json.dumps(result, indent=2, default=str) if args.json else text)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: one clear line and a non-zero exit on any bad input."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from local_runner.run import run

            return run(args)
        return inspect_command(args)
    except (RunnerError, Exception) as exc:
        from kd.errors import KDError

        if isinstance(exc, RunnerError | KDError):
            print(f"error: {exc}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
