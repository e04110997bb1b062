"""Deployment: ONNX export, quantization, backends, TensorRT engines, the pipeline, bench.

``EmotionPipeline`` (``erc_ros.runtime.pipeline``) is the one inference path.

Importing it changes nothing process-wide: thread counts and ``OMP_WAIT_POLICY`` are set
once by each entry point (:mod:`erc_ros.process`).
"""
