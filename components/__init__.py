"""Thin KFP v2 components, one per pipeline stage, each a wrapper over one ``kd`` function.

Module top levels import only the standard library, kfp and :mod:`kd.config` (light: the
components' parameter docs come from it, :mod:`components.docs`); the rest of ``kd``,
numpy and Keras are imported inside the component bodies, so compiling the pipeline needs no
TensorFlow.
"""
