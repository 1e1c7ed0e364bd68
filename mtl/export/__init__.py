"""torch -> ONNX (fp32 / fp16 / int8 Q/DQ), parity and metric gates, TensorRT compatibility check and engine build.

This package module stays import-light: the artefact contract lives in ``mtl.contract``.
Modules: ``variants`` (the table of exported variants; import-light), ``options`` (``ExportOptions``;
import-light), ``run`` (``export_checkpoint``: the steps of ``mtl export``), ``onnx_export`` (torch -> fp32
ONNX, onnxslim), ``quantize`` (onnxruntime: fp16 / int8 builders), ``parity`` (torch for the reference side),
``report`` (printed lines, export_report.md), ``onnx_io`` (atomic save, onnxruntime CPU session),
``trt_check`` (onnx only), ``tensorrt_build`` (tensorrt + cuda-python, import-guarded).
Imports run one way: ``run`` -> the stage modules -> ``onnx_io`` / ``variants``; none imports ``run``.
"""
