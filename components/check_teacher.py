"""Component: admit a teacher the user brings (imported by ``dsl.importer``)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.docs import config_args
from components.image import IMAGE
from kd.config import StudentConfig, TeacherSourceConfig


@dsl.component(base_image=IMAGE, install_kfp_package=False)
@config_args(
    TeacherSourceConfig,
    StudentConfig,
    rename={"teacher_uri": "model", "student_preset": "preset"},
    teacher="the imported teacher (a .keras file or a Model folder).",
    validation="validation Dataset from data_split (its sha256 is checked).",
    model="the admitted teacher (folder: model.keras, info.json with its identity).",
)
def check_teacher(
    teacher: Input[Model],
    validation: Input[Dataset],
    teacher_uri: str,
    student_preset: str,
    model: Output[Model],
):
    """Check a user's trained teacher and measure it before any student learns from it.

    The teacher must take the input and classes of the students' preset (``student_preset``);
    its URI as given (``teacher_uri``, the pipeline's ``teacher_model``) is recorded.
    """
    from kd.stages import check_teacher as run

    info = run(
        teacher.path,
        (validation.path, validation.metadata.get("sha256")),
        student_preset,
        model.path,
        uri=teacher_uri,
    )
    model.metadata.update(
        {k: info[k] for k in ("role", "source", "uri", "sha256", "architecture", "val_accuracy")}
    )
    model.metadata["parameters"] = info["parameters"]["total"]
