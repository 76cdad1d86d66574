"""kd: the knowledge-distillation library behind the pipeline.

Plain Python (Keras 3, numpy, scikit-learn, matplotlib); it never imports kfp, so every piece
is testable without KFP or Docker. Modules:

- ``config``: one typed, validated config per stage (defaults defined once).
- ``errors``: the exception types every bad input is reported with.
- ``storage``: atomic writes and ``gs://`` access.
- ``data``: CIFAR-10 sources (keras, python/binary archives, npz, gs://), split, Dataset files.
- ``models``: model presets (``seed``: the notebook's architectures; ``resnet``).
- ``distill``: Hinton knowledge distillation on logits (keras.distillation).
- ``train``: training loop with augmentation, schedules, checkpoints and resume.
- ``evaluate`` / ``report``: metrics, comparisons, plots and the HTML/Markdown report.
- ``export`` / ``predict``: serving exports and inference from saved models.
"""

__version__ = "0.1.0"
