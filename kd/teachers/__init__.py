"""The teacher shipped with kd: ``fast_teacher.keras`` and its provenance ``fast_teacher.json``
(written by ``tools/train_teacher.py``). ``teacher_model=shipped`` distills from it."""
