"""torch -> ONNX (fp32 / fp16 / int8 Q/DQ), parity and metric gates, TensorRT compatibility check and engine build.

This package module stays import-light: the artefact contract lives in ``mtl.contract``.
Modules: ``onnx_export`` (torch), ``quantize`` (onnxruntime), ``parity`` (torch for the reference side),
``trt_check`` (onnx only), ``tensorrt_build`` (tensorrt + cuda-python, import-guarded).
"""
