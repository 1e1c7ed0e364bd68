"""torch -> ONNX (fp32 / fp16 / int8 Q/DQ), parity and metric gates, TensorRT compatibility check and engine build.

This package module stays import-light: the artefact contract lives in ``mtl.contract``.
Modules: ``variants`` (the table of exported variants; import-light), ``options`` (``ExportOptions``;
import-light), ``run`` (``export_checkpoint``: the steps of ``mtl export``), ``onnx_export`` (torch -> fp32
ONNX, onnxslim), ``quantize`` (fp16 / int8 builders: the two INT8 recipes), ``calibration`` (INT8 frames,
activation ranges, cache), ``sensitivity`` (per-unit INT8 sensitivity), ``mixed`` (the mixed precision search),
``parity`` (torch for the reference side), ``report`` (printed lines, export_report.md), ``onnx_io`` (atomic
save, onnxruntime CPU session, conv MACs),
``trt_check`` (onnx only), ``tensorrt_build`` (tensorrt + cuda-python, import-guarded).
Imports run one way: ``run`` -> the stage modules -> ``onnx_io`` / ``variants``; none imports ``run``.
"""
