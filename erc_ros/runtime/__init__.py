"""Deployment: ONNX export, quantization, backends, TensorRT engines, the pipeline, bench.

``EmotionPipeline`` (``erc_ros.runtime.pipeline``) is the one inference path.
"""
import os

# torch's OpenMP threads busy-wait between parallel regions by default. On a shared 2-core
# machine (other processes, ONNX Runtime sessions, the ROS executor) that collapses: MiniLM
# at 128 tokens took 1.0-1.9 s with 2 spinning threads vs 0.1 s passive under load 11.
# It must be set before torch loads libgomp, hence here (import erc_ros.runtime first).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
