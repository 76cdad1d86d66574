"""Thin KFP v2 components, one per pipeline stage, each a wrapper over one ``kd`` function.

Module top levels import only the standard library and kfp; the ``kd`` library, numpy and
Keras are imported inside the component bodies, so compiling the pipeline needs no TensorFlow.
"""
