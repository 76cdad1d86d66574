"""Run the pipeline on this machine with ``kfp.local`` and inspect what runs left behind.

``kd.runs`` reads a pipeline root (a local folder written by ``kfp.local`` or a
``gs://`` root written by KFP / Vertex AI) and lists runs, tasks, artifacts and metrics.
"""
