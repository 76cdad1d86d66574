"""Component: publish the blessed serving model (runs only when the quality gate passed)."""

from kfp import dsl
from kfp.dsl import Dataset, Input, Model, Output

from components.image import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def export_model(
    student: Input[Model],
    test: Input[Dataset],
    check_images: int,
    blessed: Output[Model],
):
    """Export the distilled student as a SavedModel (``serving_default``) and a .keras file.

    Args:
        student: the distilled student that passed the gate.
        test: the test Dataset; the SavedModel must reproduce the Keras predictions on it.
        check_images: how many test images the export check compares.
        blessed: the serving model folder (saved_model/, model.keras, export.json).
    """
    from kd.stages import export_blessed

    info = export_blessed(
        student.path, (test.path, test.metadata.get("sha256")), check_images, blessed.path
    )
    blessed.metadata.update(student.metadata)
    blessed.metadata.update({"blessed": True, **info})
