"""Component: data split (CIFAR-10 source -> train / validation / test Datasets)."""

from kfp import dsl
from kfp.dsl import Dataset, Output

from components.docs import config_args
from components.image import IMAGE
from kd.config import SplitConfig


@dsl.component(base_image=IMAGE, install_kfp_package=False)
@config_args(
    SplitConfig,
    rename={"split_seed": "seed"},
    train="the training Dataset (uncompressed .npz: x uint8 (N,32,32,3), y, indices).",
    validation="the validation Dataset.",
    test="the test Dataset (the official test set).",
)
def data_split(
    source: str,
    val_fraction: float,
    split_seed: int,
    train_per_class: int,
    test_per_class: int,
    train: Output[Dataset],
    validation: Output[Dataset],
    test: Output[Dataset],
):
    """Load CIFAR-10 and write a stratified, seeded train/validation split and the test set."""
    from kd.config import SplitConfig
    from kd.stages import split_data

    cfg = SplitConfig(
        source=source,
        val_fraction=val_fraction,
        seed=split_seed,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
    )
    meta = split_data(cfg, train.path, validation.path, test.path)
    for artifact, name in ((train, "train"), (validation, "validation"), (test, "test")):
        artifact.metadata.update(meta[name])
        artifact.metadata.update({"source": source, "split_seed": split_seed})
