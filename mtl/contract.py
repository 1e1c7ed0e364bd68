"""The artefact contract between ``mtl export`` and the torch-free runtime: output names, the ``mtl``
metadata (build / validate / read / write), the TensorRT engine sidecar and the GPU identity recorded in it.

Both ``mtl.export`` and ``mtl.runtime`` import this module; the runtime never imports ``mtl.export``.
Torch-free; ``onnx`` is optional (metadata is read through onnxruntime when it is absent).

ONNX ``metadata_props`` key ``"mtl"`` holds one JSON object::

    {"mtl_version": "0.1.0", "format": 1, "config": cfg.to_dict(),
     "inputs": {"image": [B, 3, H, W], "bev": [B, C, 256, 256]},     # B: int, or "batch" if dynamic
     "outputs": ["bbox_heatmap", "bbox_reg", "sem_logits", ...],
     "decode": bool, "precision": "fp32" | "fp16" | "int8", "opset": int,
     "source_checkpoint_sha256": str, "heatmap_activation": "sigmoid"}

With ``decode`` the graph also has ``det_scores`` (B, K) float32 (score-sorted, NOT thresholded: the
runtime keeps ``det_scores > cfg.decode.score_threshold``), ``det_labels`` (B, K) int64 and
``det_boxes`` (B, K, 7) float32 (x, y, z, l, w, h, yaw in metres), K = min(cfg.decode.max_detections, C*Hh*Wh).

A TensorRT engine ``<name>.engine`` stays pure; ``<name>.engine.json`` (``sidecar_path``) holds the same
metadata plus ``tensorrt_version``, ``gpu_name``, ``compute_capability``, ``precision_recipe``,
``onnx_sha256``, ``onnx_path`` (the source ONNX, relative to the engine's folder and confined to it),
``engine_sha256`` (the engine bytes the sidecar describes) and ``profiles``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import ModelMismatchError

METADATA_KEY = "mtl"
METADATA_FORMAT = 1
# the model's outputs, in this order, in torch (``Model.forward``'s dict), ONNX and every runtime backend
OUTPUTS = ("bbox_heatmap", "bbox_reg", "sem_logits")
# appended by ``mtl export --decode`` (in-graph peak NMS + top-K + box decode)
DECODE_OUTPUTS = ("det_scores", "det_labels", "det_boxes")
PRECISIONS = ("fp32", "fp16", "int8")
REQUIRED_KEYS = ("mtl_version", "format", "config", "inputs", "outputs", "decode", "precision", "opset",
                 "source_checkpoint_sha256", "heatmap_activation")
SIDECAR_KEYS = ("tensorrt_version", "gpu_name", "compute_capability", "precision_recipe", "onnx_sha256", "onnx_path",
                "engine_sha256", "profiles")
# size limits of the files the sidecar check hashes: an ONNX protobuf cannot exceed 2 GiB (external data is not
# used by mtl export); an engine of this model is megabytes, so 4 GiB only stops a wrong or endless file
MAX_ONNX_BYTES = 2 << 30
MAX_ENGINE_BYTES = 4 << 30
MAX_SIDECAR_BYTES = 64 << 20


def build_metadata(cfg_dict: dict, *, batch: int | str, decode: bool, precision: str, opset: int,
                   source_checkpoint_sha256: str, mtl_version: str | None = None, **extra: Any) -> dict:
    """The ``mtl`` metadata object for a model exported from a config dict (``cfg.to_dict()``)."""
    from .config import Config

    if mtl_version is None:
        from . import __version__ as mtl_version
    cfg = Config.from_dict(cfg_dict)
    h, w = cfg.camera.image_hw
    gh, gw = cfg.grid.shape
    meta = {
        "mtl_version": mtl_version,
        "format": METADATA_FORMAT,
        "config": cfg.to_dict(),
        "inputs": {"image": [batch, 3, int(h), int(w)], "bev": [batch, cfg.grid.n_channels, gh, gw]},
        "outputs": list(OUTPUTS) + (list(DECODE_OUTPUTS) if decode else []),
        "decode": bool(decode),
        "precision": precision,
        "opset": int(opset),
        "source_checkpoint_sha256": source_checkpoint_sha256,
        "heatmap_activation": "sigmoid",
    }
    meta.update(extra)
    validate_metadata(meta, "<metadata>")
    return meta


def validate_metadata(meta: Any, source: str | Path) -> dict:
    """Check the metadata object; raise ``ModelMismatchError(source, reason)`` if it is not usable."""
    if not isinstance(meta, dict):
        raise ModelMismatchError(source, f"mtl metadata must be a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelMismatchError(source, f"mtl metadata lacks keys {missing} (re-export with `mtl export`)")
    if meta["format"] != METADATA_FORMAT:
        raise ModelMismatchError(source, f"mtl metadata format {meta['format']!r} is not supported "
                                         f"(this mtl reads format {METADATA_FORMAT})")
    if meta["precision"] not in PRECISIONS:
        raise ModelMismatchError(source, f"unknown precision {meta['precision']!r} (expected one of {PRECISIONS})")
    if meta["heatmap_activation"] != "sigmoid":
        raise ModelMismatchError(source, f"unknown heatmap_activation {meta['heatmap_activation']!r}")
    ins = meta["inputs"]
    if not isinstance(ins, dict) or set(ins) != {"image", "bev"} or not all(
            isinstance(v, list) and len(v) == 4 for v in ins.values()):
        raise ModelMismatchError(source, f"mtl metadata 'inputs' must map image/bev to 4-D shapes, got {ins!r}")
    expect = list(OUTPUTS) + (list(DECODE_OUTPUTS) if meta["decode"] else [])
    if list(meta["outputs"]) != expect:
        raise ModelMismatchError(source, f"mtl metadata outputs {meta['outputs']} != expected {expect}")
    from .config import Config
    from .errors import ConfigError

    try:
        Config.from_dict(meta["config"])
    except ConfigError as e:
        raise ModelMismatchError(source, f"mtl metadata config is invalid ({e})") from None
    return meta


def config_from_metadata(meta: dict):
    """The ``mtl.config.Config`` recorded in the metadata."""
    from .config import Config

    return Config.from_dict(meta["config"])


def parse_metadata(text: str | None, source: str | Path) -> dict:
    """JSON text of the ``mtl`` key -> validated dict (``ModelMismatchError`` if absent or invalid)."""
    if text is None:
        raise ModelMismatchError(source, f"no '{METADATA_KEY}' entry in the ONNX metadata_props: "
                                         "not exported by `mtl export`")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as e:
        raise ModelMismatchError(source, f"'{METADATA_KEY}' metadata is not valid JSON ({e})") from None
    return validate_metadata(meta, source)


def write_onnx_metadata(model_proto, meta: dict) -> None:
    """Set ``metadata_props['mtl']`` on an ``onnx.ModelProto`` in place (replacing an older entry)."""
    validate_metadata(meta, "<metadata>")
    keep = [p for p in model_proto.metadata_props if p.key != METADATA_KEY]
    del model_proto.metadata_props[:]
    for p in keep:
        model_proto.metadata_props.add(key=p.key, value=p.value)
    model_proto.metadata_props.add(key=METADATA_KEY, value=json.dumps(meta, sort_keys=False))


def read_onnx_metadata(path: str | Path, session: Any = None) -> dict:
    """Validated ``mtl`` metadata of an ONNX file.

    ``session``: an onnxruntime session already holding the model (the runtime: weights are loaded once, by
    the session that runs them). Without one, ``onnx`` reads the file if installed, else onnxruntime."""
    path = Path(path)
    if session is None and not path.is_file():
        raise ModelMismatchError(path, "ONNX model not found")
    if session is not None:
        props = dict(session.get_modelmeta().custom_metadata_map)
    else:
        props = _read_props(path)
    return parse_metadata(props.get(METADATA_KEY), path)


def _read_props(path: Path) -> dict:
    try:
        import onnx
    except ImportError:
        onnx = None
    if onnx is not None:
        try:
            proto = onnx.load(str(path), load_external_data=False)
        except Exception as e:  # noqa: BLE001 - protobuf DecodeError and friends
            raise ModelMismatchError(path, f"not a readable ONNX model ({type(e).__name__}: {e})") from None
        return {p.key: p.value for p in proto.metadata_props}
    try:
        import onnxruntime as ort
    except ImportError:
        raise ModelMismatchError(path, "neither onnx nor onnxruntime is installed: cannot read the model") from None
    so = ort.SessionOptions()
    so.log_severity_level = 3
    try:
        sess = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own Fail / InvalidGraph types
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise ModelMismatchError(path, f"not a loadable ONNX model ({type(e).__name__}: {msg})") from None
    return dict(sess.get_modelmeta().custom_metadata_map)


def sidecar_path(engine_path: str | Path) -> Path:
    """``model.engine`` -> ``model.engine.json``."""
    p = Path(engine_path)
    return p.with_name(p.name + ".json")


def write_sidecar(engine_path: str | Path, meta: dict) -> Path:
    """Write the TensorRT sidecar atomically (the ONNX metadata plus the TensorRT build facts)."""
    from .io import write_json_atomic

    validate_metadata(meta, sidecar_path(engine_path))
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if missing:
        raise ModelMismatchError(sidecar_path(engine_path), f"sidecar metadata lacks keys {missing}")
    path = sidecar_path(engine_path)
    write_json_atomic(path, meta)
    return path


def read_sidecar(engine_path: str | Path) -> dict:
    """Validated sidecar of an engine; ``ModelMismatchError`` if it is missing or incomplete."""
    path = sidecar_path(engine_path)
    if not path.is_file():
        raise ModelMismatchError(engine_path, f"TensorRT sidecar {path.name} not found next to the engine "
                                              "(engines must be built with `mtl export --trt`)")
    try:
        meta = json.loads(read_capped(path, MAX_SIDECAR_BYTES, "sidecar").decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelMismatchError(path, f"sidecar is not readable JSON ({e})") from None
    validate_metadata(meta, path)
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if missing:
        raise ModelMismatchError(path, f"sidecar lacks keys {missing}")
    return meta


def gpu_info(device: int = 0) -> dict[str, Any]:
    """Name and compute capability of CUDA device ``device`` (``mtl.gpu.gpu_info``): the identity the engine
    builder writes into the sidecar and the TensorRT backend compares."""
    from .gpu import gpu_info as _gpu_info

    return _gpu_info(device)


def sha256_capped(path: str | Path, cap: int, what: str = "file") -> str:
    """sha256 of a regular file of at most ``cap`` bytes, read in 1 MiB blocks; a larger file (or one that
    grows past the cap while it is read) is refused by name before it is read in full, so a huge or endless
    file never hangs a check (``ModelMismatchError``)."""
    import hashlib
    import stat

    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise ModelMismatchError(path, f"{what} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ModelMismatchError(path, f"{what} is not a regular file")
    if st.st_size > cap:
        raise ModelMismatchError(path, f"{what} is {st.st_size / 2**30:.2f} GiB, over the {cap / 2**30:.0f} GiB "
                                       "limit; refused without reading it")
    h, n = hashlib.sha256(), 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            n += len(block)
            if n > cap:
                raise ModelMismatchError(path, f"{what} grew past the {cap / 2**30:.0f} GiB limit while being read")
            h.update(block)
    return h.hexdigest()


def read_capped(path: str | Path, cap: int, what: str = "file") -> bytes:
    """The bytes of a regular file of at most ``cap`` bytes (same refusals as ``sha256_capped``)."""
    import stat

    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise ModelMismatchError(path, f"{what} cannot be read ({e.strerror or e})") from None
    if not stat.S_ISREG(st.st_mode) or st.st_size > cap:
        sha256_capped(path, cap, what)          # raises the named refusal
    with open(path, "rb") as f:
        data = f.read(cap + 1)
    if len(data) > cap:
        raise ModelMismatchError(path, f"{what} grew past the {cap / 2**30:.0f} GiB limit while being read")
    return data


__all__ = [
    "DECODE_OUTPUTS",
    "MAX_ENGINE_BYTES",
    "MAX_ONNX_BYTES",
    "METADATA_FORMAT",
    "METADATA_KEY",
    "OUTPUTS",
    "PRECISIONS",
    "SIDECAR_KEYS",
    "build_metadata",
    "config_from_metadata",
    "gpu_info",
    "parse_metadata",
    "read_capped",
    "read_onnx_metadata",
    "read_sidecar",
    "sha256_capped",
    "sidecar_path",
    "validate_metadata",
    "write_onnx_metadata",
    "write_sidecar",
]
