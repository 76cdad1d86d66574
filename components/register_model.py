"""Component: register the blessed student in the Vertex AI Model Registry (and deploy it)."""

from kfp import dsl
from kfp.dsl import Artifact, Input, Metrics, Model, Output

from components.docs import config_args
from components.image import IMAGE
from kd.config import RegistryConfig

#: The component's parameters are RegistryConfig's fields with the pipeline's prefix.
PREFIX = "registry_"


@dsl.component(base_image=IMAGE, install_kfp_package=False)
@config_args(
    RegistryConfig,
    rename={PREFIX + f: f for f in RegistryConfig.__dataclass_fields__},
    blessed="the blessed serving model (saved_model.pb at its root) from export_model.",
    metrics="the evaluation's metrics (test accuracies, KD gain) for labels and description.",
    vertex_model="the registered model version (metadata: resourceName, version, aliases, "
    "endpoint and deployed model id after a deployment).",
)
def register_model(
    blessed: Input[Model],
    metrics: Input[Metrics],
    registry_upload: bool,
    registry_serving_image: str,
    registry_project: str,
    registry_location: str,
    registry_display_name: str,
    registry_parent_model: str,
    registry_version_aliases: str,
    registry_api_endpoint: str,
    registry_deploy_endpoint: str,
    registry_machine_type: str,
    registry_accelerator_type: str,
    registry_accelerator_count: int,
    registry_min_replicas: int,
    registry_max_replicas: int,
    vertex_model: Output[Artifact],
):
    """Upload the blessed SavedModel as a Vertex AI model version, with the run's scores and
    the teacher's identity as labels and description; deploy it when an endpoint is given."""
    from kd.config import RegistryConfig, from_dict
    from kd.registry import upload_model

    params = dict(locals())
    cfg = from_dict(
        RegistryConfig, {f: params["registry_" + f] for f in RegistryConfig.__dataclass_fields__}
    )
    scores = {k: v for k, v in metrics.metadata.items() if isinstance(v, int | float)}
    info = upload_model(cfg, blessed.uri, dict(blessed.metadata), scores)
    vertex_model.uri = f"{info['api_endpoint']}/v1/{info['model']}"
    vertex_model.metadata.update(
        {
            "resourceName": info["model"],
            "version_id": info["model_version_id"],
            "version_aliases": ",".join(info["version_aliases"]),
            **{k: info[k] for k in ("endpoint", "deployed_model_id") if k in info},
        }
    )
