"""The exported model variants, one row each: what ``mtl export`` writes, how, how it is checked, and where
``mtl bench`` finds it.

``VARIANTS`` is read by the ``mtl export`` flags (``mtl.cli.deploy``), the exporter (``mtl.export.run``:
build, metadata, TensorRT check, parity / metric gate, engines) and ``mtl bench`` (its onnxruntime CPU
columns, the file each one opens and the skip reason when that file is missing). A new precision is one
``Variant`` row plus one builder function here; nothing else names the variants.

Import-light on purpose (no torch, no onnx): the CLI and ``mtl bench`` import it. The builders import their
tools (``mtl.export.quantize``: onnx / onnxruntime) only when they run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..contract import EXPORT_FP32_FILE

if TYPE_CHECKING:
    from onnx import ModelProto

# builder(fp32 proto, calibration (``mtl.export.calibration.Calibration``; None unless the row is calibrated),
# exclude_heads) -> (proto, info); exclude_heads: keep the final head convs in float
# (``mtl.export.quantize.final_convs``). A calibrated row's builder is its full INT8 model; the exporter's
# mixed precision step rebuilds it with more units in float (``mtl.export.quantize.build_int8``).
Builder = Callable[[Any, Any, bool], tuple]
TARGETS = ("tensorrt", "cpu")      # static TensorRT check + engine build / onnxruntime CPU only
CHECKS = ("parity", "metrics")     # gated on torch parity (atol) / on the mIoU + mAP drop vs fp32


def build_fp16(proto: ModelProto, calib: Any, exclude_heads: bool) -> tuple[ModelProto, dict[str, Any]]:
    """fp16 weights and compute, float32 I/O; the decode tail stays fp32 (no calibration, heads included)."""
    from .quantize import convert_fp16

    return convert_fp16(proto)


def build_int8(proto: ModelProto, calib: Any, exclude_heads: bool) -> tuple[ModelProto, dict[str, Any]]:
    """INT8 for TensorRT: symmetric Q/DQ on conv inputs and weights in the fp16 model (opset >= 19)."""
    from .quantize import quantize_int8

    return quantize_int8(proto, calib, exclude_heads=exclude_heads, target="tensorrt")


def build_int8_cpu(proto: ModelProto, calib: Any, exclude_heads: bool) -> tuple[ModelProto, dict[str, Any]]:
    """INT8 for onnxruntime's x86 kernels: UINT8 activations, int32 biases, adds / concats / resizes too."""
    from .quantize import quantize_int8

    return quantize_int8(proto, calib, exclude_heads=exclude_heads, target="cpu")


@dataclass(frozen=True)
class Variant:
    name: str               # report key (export_report.json "variants"), printed in the check / gate lines
    file: str               # file written in ``mtl export --out``
    flag: str | None        # ``mtl export`` flag that asks for it (None: always written)
    help: str               # that flag's --help
    build: Builder | None   # fp32 proto -> (proto, info); None: the torch export itself
    precision: str          # ONNX metadata "precision"
    target: str             # one of TARGETS
    check: str              # one of CHECKS
    bench: str              # ``mtl bench --compare`` column (onnxruntime CPU EP)
    tag: str                # that column's tag in the bench file names
    calibrated: bool = False                        # the builder needs --calib-data frames
    extra_metadata: tuple[tuple[str, str], ...] = ()  # ONNX metadata entries beyond fp32's

    def metadata(self, fp32_meta: dict[str, Any]) -> dict[str, Any]:
        """This variant's ONNX metadata: the fp32 model's with its own precision (and extra entries)."""
        return {**fp32_meta, "precision": self.precision, **dict(self.extra_metadata)}

    @property
    def timing_key(self) -> str:
        """Its build time in export_report.json "timings_s"."""
        return f"{self.name}_{'quantize' if self.calibrated else 'convert'}"


FP32 = Variant("fp32", EXPORT_FP32_FILE, None, "", None, "fp32", "tensorrt", "parity", "onnxruntime", "ort")
VARIANTS: tuple[Variant, ...] = (
    FP32,
    Variant("fp16", "model_fp16.onnx", "--fp16",
            "Also write model_fp16.onnx (I/O stay float32), gated on --val-data metrics.",
            build_fp16, "fp16", "tensorrt", "metrics", "onnxruntime-fp16", "ort-fp16"),
    Variant("int8", "model_int8.onnx", "--int8",
            "Also write model_int8.onnx for TensorRT (explicit symmetric INT8 Q/DQ in the fp16 model, calibrated on "
            "--calib-data).",
            build_int8, "int8", "tensorrt", "metrics", "onnxruntime-int8", "ort-int8",
            calibrated=True, extra_metadata=(("int8_target", "tensorrt"),)),
    Variant("int8_cpu", "model_int8_cpu.onnx", "--int8-cpu",
            "Also write model_int8_cpu.onnx: INT8 for the onnxruntime CPU (uint8 activations, adds/concats/resizes "
            "in int8; not for TensorRT).",
            build_int8_cpu, "int8", "cpu", "metrics", "onnxruntime-int8-cpu", "ort-int8cpu",
            calibrated=True, extra_metadata=(("int8_target", "cpu"),)),
)
OPTIONAL = tuple(v for v in VARIANTS if v.flag)    # the ones a flag asks for (all but fp32)
GATED_PRECISIONS = "/".join(dict.fromkeys(v.precision for v in VARIANTS if v.check == "metrics"))  # "fp16/int8"

# mtl bench: every variant's column runs its file on the onnxruntime CPU EP; the other columns are the peers a
# user could pick instead (torch eager / torch.compile on the checkpoint, OpenVINO on the fp32 ONNX: fp32 and its
# own default precision), the fp32 model on onnxruntime's GPU providers and the native TensorRT engine
BENCH_BACKENDS = ("torch", "torch-compile", *(v.bench for v in VARIANTS), "openvino", "openvino-auto",
                  "onnxruntime-cuda", "onnxruntime-trt", "tensorrt")
DEFAULT_COMPARE = ("torch", "torch-compile", *(v.bench for v in VARIANTS), "openvino", "tensorrt")


def variant(name: str) -> Variant:
    """The row called ``name`` (KeyError if there is none)."""
    for v in VARIANTS:
        if v.name == name:
            return v
    raise KeyError(name)


def bench_variant(column: str) -> Variant | None:
    """The row behind a ``mtl bench`` column, None for the columns that are not a variant file."""
    return next((v for v in VARIANTS if v.bench == column), None)
