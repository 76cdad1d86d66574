"""The container image every component runs in: named here, and only here.

``docker/build.sh`` tags the image it builds with :data:`IMAGE` (it reads this file), the
components use it as ``base_image``, and ``pipeline.py compile --image`` rewrites it for a
registry (e.g. ``us-docker.pkg.dev/PROJECT/REPO/kd-pipeline:0.1.0``).
"""

IMAGE_NAME = "kd-pipeline"
IMAGE_TAG = "0.1.0"
IMAGE = f"{IMAGE_NAME}:{IMAGE_TAG}"
