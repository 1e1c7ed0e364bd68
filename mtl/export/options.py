"""``ExportOptions``: everything ``mtl export`` is asked to do, as one frozen value checked in one place.

The CLI builds it from its flags (one flag per optional row of ``mtl.export.variants.VARIANTS``);
``mtl.export.run.export_checkpoint`` takes it. Import-light (no torch / onnx).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .tensorrt_build import parse_profile
from .variants import OPTIONAL, Variant

MIN_OPSET = 18        # the dynamo exporter builds at >= 18
CALIB_METHODS = ("minmax", "percentile", "entropy", "mse")     # mtl.export.calibration
DEFAULT_MAX_DROP = 0.005     # allowed mIoU / mAP drop of a gated variant vs fp32 (0.5 points)
_PATHS = ("checkpoint", "out_dir", "timing_cache")      # made Paths; the data dirs are printed as given


@dataclass(frozen=True)
class ExportOptions:
    checkpoint: Path
    out_dir: Path
    variants: tuple[str, ...] = ()       # names of optional VARIANTS rows to write too (fp32 always is)
    opset: int = 18
    calib_data: str | Path | None = None     # chunks for INT8 calibration
    calib_frames: int = 32               # sampled evenly across the scenes of calib_data
    calib_method: str = "minmax"         # one of CALIB_METHODS
    calib_percentile: float = 99.99      # the percentile method's |x| percentile
    val_data: str | Path | None = None       # chunks for the parity report and the metric gates
    gate_frames: int = 128               # 0: all of val_data
    max_drop_miou: float = DEFAULT_MAX_DROP
    max_drop_map: float = DEFAULT_MAX_DROP
    mixed_precision: bool = True         # an INT8 variant failing its gate keeps its most sensitive units in float
    sensitivity: bool = False            # per-unit sensitivity table of the INT8 variants (also when they pass)
    sensitivity_frames: int = 4          # validation frames of the per-unit output-error proxy
    sensitivity_top: int = 6             # most sensitive units whose metrics are measured (--sensitivity)
    decode: bool = False                 # in-graph peak decode (det_* outputs)
    slim: bool = True
    batch: int = 1
    dynamic_batch: bool = False
    trt: bool = False
    trt_profile: str | None = None       # "MIN:OPT:MAX" batch sizes (implies a dynamic batch)
    timing_cache: Path | None = None     # default OUT/timing.cache
    parity: bool = True
    parity_frames: int = 4
    atol: float = 1e-4
    exclude_heads_int8: bool = True      # calibrated variants keep the final head convs in float
    progress: bool = True                # progress bar of the metric gate
    overwrite: bool = False              # replace an export already in out_dir (as one set, once complete)

    def __post_init__(self) -> None:
        for name in _PATHS:              # accept str paths; the dataclass stays frozen for everyone else
            value = getattr(self, name)
            if value is not None and not isinstance(value, Path):
                object.__setattr__(self, name, Path(value))
        object.__setattr__(self, "variants", tuple(self.variants))

    def validate(self) -> None:
        """Raise ``ConfigError`` (one line, naming the flag) for options that cannot work together."""
        unknown = [n for n in self.variants if n not in {v.name for v in OPTIONAL}]
        if unknown:
            raise ConfigError(None, f"unknown export variants {unknown} (choose from "
                                    f"{', '.join(v.name for v in OPTIONAL)}; fp32 is always written)")
        try:
            parse_profile(self.trt_profile)
        except ValueError as e:
            raise ConfigError(None, str(e)) from None
        if self.opset < MIN_OPSET:
            raise ConfigError(None, f"--opset {self.opset}: the dynamo exporter needs opset >= {MIN_OPSET}")
        if self.batch < 1:
            raise ConfigError(None, f"--batch must be >= 1, got {self.batch}")
        calibrated = [v for v in self.selected if v.calibrated]
        if calibrated and not self.calib_data:
            raise ConfigError(None, f"{calibrated[0].flag} needs --calib-data DIR (chunks for the calibration frames)")
        self._validate_int8(calibrated)
        if self.parity and not (self.val_data or self.calib_data):
            raise ConfigError(None, "the parity report needs real frames: pass --val-data DIR (or --calib-data DIR), "
                                    "or --no-parity to skip parity and metric gates")
        if self.parity and any(v.check == "metrics" for v in self.selected) and not self.val_data:
            flags = "/".join(v.flag for v in OPTIONAL if v.check == "metrics")
            raise ConfigError(None, f"{flags} are gated on mIoU/mAP over --val-data DIR: pass it (or --no-parity)")

    def _validate_int8(self, calibrated: list[Variant]) -> None:
        if self.calib_method not in CALIB_METHODS:
            raise ConfigError(None, f"--calib-method {self.calib_method!r}: choose from {', '.join(CALIB_METHODS)}")
        if not 0.0 < self.calib_percentile <= 100.0:
            raise ConfigError(None, f"--calib-percentile must be in (0, 100], got {self.calib_percentile:g}")
        if self.sensitivity_frames < 1 or self.sensitivity_top < 0:
            raise ConfigError(None, f"--sensitivity-frames must be >= 1 and --sensitivity-top >= 0, got "
                                    f"{self.sensitivity_frames} / {self.sensitivity_top}")
        if self.sensitivity and not calibrated:
            flags = "/".join(v.flag for v in OPTIONAL if v.calibrated)
            raise ConfigError(None, f"--sensitivity ranks the layers of an INT8 variant: add {flags}")
        if self.sensitivity and not self.parity:
            raise ConfigError(None, "--sensitivity measures on --val-data frames: it cannot run with --no-parity")

    @property
    def selected(self) -> tuple[Variant, ...]:
        """The optional rows asked for, in table order (the order they are built, checked and reported)."""
        return tuple(v for v in OPTIONAL if v.name in self.variants)

    @property
    def profile(self) -> tuple[int, int, int] | None:
        """The parsed --trt-profile (ValueError when malformed; ``validate`` reports it)."""
        return parse_profile(self.trt_profile)

    @property
    def dynamic(self) -> bool:
        """Dynamic batch axis: asked for, or implied by a TensorRT profile."""
        return self.dynamic_batch or bool(self.trt_profile)

    @property
    def run_batch(self) -> int:
        """Batch of the parity / calibration / gate runs (2 exercises a dynamic batch axis)."""
        return 2 if self.dynamic else self.batch

    @property
    def batch_label(self) -> int | str:
        """The batch as the report and the log name it."""
        return "dynamic" if self.dynamic else self.batch

    @property
    def parity_data(self) -> str | Path | None:
        """Where the parity frames come from: --val-data, else --calib-data."""
        return self.val_data or self.calib_data

    def to_report(self) -> dict[str, Any]:
        """The "options" entry of export_report.json."""
        profile = self.profile
        return {"opset": self.opset, **{v.name: v.name in self.variants for v in OPTIONAL}, "decode": self.decode,
                "slim": self.slim, "trt": self.trt, "trt_profile": list(profile) if profile else None,
                "batch": self.batch_label, "atol": self.atol, "parity": self.parity,
                "parity_frames": self.parity_frames, "gate_frames": self.gate_frames,
                "max_drop_miou": self.max_drop_miou, "max_drop_map": self.max_drop_map,
                "calib_frames": self.calib_frames, "calib_data": _str(self.calib_data), "val_data": _str(self.val_data),
                "calib_method": self.calib_method, "calib_percentile": self.calib_percentile,
                "mixed_precision": self.mixed_precision, "sensitivity": self.sensitivity,
                "sensitivity_frames": self.sensitivity_frames, "sensitivity_top": self.sensitivity_top}


def _str(path: str | Path | None) -> str | None:
    return str(path) if path else None

