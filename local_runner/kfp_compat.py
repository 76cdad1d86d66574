"""What ``kfp.local`` lacks for this pipeline, added where it runs: one patch, applied once.

``dsl.OneOf`` over **artifacts** (the teacher Model comes from either the bring-your-own
branch or the training branch): kfp 2.17.3's local orchestrator resolves ``OneOf`` over
parameters, skipping branches that did not run, but for artifacts it insists on exactly one
selector (``Expected 1 artifact in ArtifactSelectorSpec. Got: 2``). Vertex AI and the KFP
backend resolve both. :func:`enable_artifact_oneof` gives artifacts the parameters' rule:
the one branch that produced the output wins; none or several is an error.
"""

from __future__ import annotations

from typing import Any

_PATCHED = False


def _dag_output_artifacts(cls: Any, dag_outputs_spec: Any, io_store: Any) -> dict[str, Any]:
    outputs: dict[str, Any] = {}
    for key, spec in dag_outputs_spec.artifacts.items():
        found = []
        for sel in spec.artifact_selectors:
            try:
                found.append(
                    io_store.get_task_output(sel.producer_subtask, sel.output_artifact_key)
                )
            except (KeyError, ValueError):  # that branch did not run
                continue
        if len(found) != 1:
            raise ValueError(
                f"dsl.OneOf artifact output {key!r}: {len(found)} branches produced it, "
                "expected exactly 1"
            )
        outputs[key] = found[0]
    return outputs


def enable_artifact_oneof() -> None:
    """Let ``kfp.local`` resolve ``dsl.OneOf`` over artifacts (idempotent)."""
    global _PATCHED
    if _PATCHED:
        return
    from kfp.local.orchestrator.orchestrator_utils import OrchestratorUtils

    OrchestratorUtils.get_dag_output_artifacts = classmethod(_dag_output_artifacts)  # type: ignore[method-assign,assignment]
    _PATCHED = True
