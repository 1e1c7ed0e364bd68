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
# untrusted metadata JSON (ONNX key ``mtl``, sidecar): a real one is ~10 kB and a dozen levels deep
MAX_METADATA_CHARS = 16 << 20
MAX_JSON_DEPTH = 64
MAX_OPSET = 1000
MAX_DIM = 1 << 16                  # a declared input dim (image side, BEV side, channels)
INT8_TARGETS = ("tensorrt", "cpu")
MAX_ONNX_FIELDS = 100_000          # top-level protobuf fields walked when reading the metadata alone


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
    """Check the metadata object, every field's type and range before anything uses it; raise
    ``ModelMismatchError(source, reason)`` (one line naming the key) if it is not usable."""
    if not isinstance(meta, dict):
        raise ModelMismatchError(source, f"mtl metadata must be a JSON object, got {type(meta).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelMismatchError(source, f"mtl metadata lacks keys {missing} (re-export with `mtl export`)")
    if not _is_int(meta["format"]) or meta["format"] != METADATA_FORMAT:
        raise ModelMismatchError(source, f"mtl metadata format {_show(meta['format'])} is not supported "
                                         f"(this mtl reads format {METADATA_FORMAT})")
    if meta["precision"] not in PRECISIONS:
        raise ModelMismatchError(source, f"unknown precision {_show(meta['precision'])} (expected one of "
                                         f"{PRECISIONS})")
    if meta["heatmap_activation"] != "sigmoid":
        raise ModelMismatchError(source, f"unknown heatmap_activation {_show(meta['heatmap_activation'])}")
    for key, ok, expected in _FIELD_CHECKS:
        if key in meta and not ok(meta[key]):
            raise ModelMismatchError(source, f"mtl metadata {key}: expected {expected}, got {_show(meta[key])}")
    _check_inputs(meta["inputs"], source)
    expect = list(OUTPUTS) + (list(DECODE_OUTPUTS) if meta["decode"] else [])
    if meta["outputs"] != expect:
        raise ModelMismatchError(source, f"mtl metadata outputs {_show(meta['outputs'])} != expected {expect}")
    from .config import Config
    from .errors import ConfigError

    if not isinstance(meta["config"], dict):
        raise ModelMismatchError(source, f"mtl metadata config: expected a JSON object, got {_show(meta['config'])}")
    try:
        Config.from_dict(meta["config"])
    except ConfigError as e:
        raise ModelMismatchError(source, f"mtl metadata config is invalid ({e})") from None
    return meta


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_sha256(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in "0123456789abcdef" for c in v)


def _short_str(v: Any, n: int = 256) -> bool:
    return isinstance(v, str) and 0 < len(v) <= n


def _show(v: Any, limit: int = 60) -> str:
    """``int 5`` / ``str 'x'`` / ``list [...]``: a short, one-line rendering of a bad metadata value."""
    text = repr(v) if not isinstance(v, (dict, list)) else json.dumps(v)[: limit + 1]
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return "null" if v is None else f"{type(v).__name__} {text}"


# (key, check, what it must be) of the metadata fields outside the config (config: ``Config.from_dict``)
_FIELD_CHECKS: tuple[tuple[str, Any, str], ...] = (
    ("mtl_version", _short_str, "a version string (at most 256 characters)"),
    ("decode", lambda v: isinstance(v, bool), "true or false"),
    ("opset", lambda v: _is_int(v) and 1 <= v <= MAX_OPSET, f"an integer opset in 1..{MAX_OPSET}"),
    ("outputs", lambda v: isinstance(v, list) and all(isinstance(o, str) for o in v), "a list of output names"),
    ("inputs", lambda v: isinstance(v, dict), "an object mapping image/bev to shapes"),
    ("source_checkpoint_sha256", _is_sha256, "64 lowercase hex digits (a sha256)"),
    ("int8_target", lambda v: v in INT8_TARGETS, f"one of {INT8_TARGETS}"),
)


def _check_inputs(ins: dict, source: str | Path) -> None:
    """image/bev -> [batch, C, H, W]: batch an int >= 1 or a symbolic name, the rest ints in range."""
    if set(ins) != {"image", "bev"}:
        raise ModelMismatchError(source, f"mtl metadata 'inputs' must map image/bev to 4-D shapes, got "
                                         f"{_show(ins)}")
    for name, shape in ins.items():
        if not isinstance(shape, list) or len(shape) != 4:
            raise ModelMismatchError(source, f"mtl metadata 'inputs' must map image/bev to 4-D shapes, got "
                                             f"inputs.{name} {_show(shape)}")
        for i, d in enumerate(shape):
            symbolic = i == 0 and _short_str(d, 64)
            if not symbolic and not (_is_int(d) and 1 <= d <= MAX_DIM):
                raise ModelMismatchError(source, f"mtl metadata inputs.{name}[{i}]: expected an integer in "
                                                 f"1..{MAX_DIM}{' or a batch name' if i == 0 else ''}, got {_show(d)}")


def config_from_metadata(meta: dict):
    """The ``mtl.config.Config`` recorded in the metadata."""
    from .config import Config

    return Config.from_dict(meta["config"])


def parse_metadata(text: str | None, source: str | Path) -> dict:
    """JSON text of the ``mtl`` key -> validated dict (``ModelMismatchError`` if absent or invalid)."""
    if text is None:
        raise ModelMismatchError(source, f"no '{METADATA_KEY}' entry in the ONNX metadata_props: "
                                         "not exported by `mtl export`")
    return validate_metadata(load_json_bounded(text, source, f"'{METADATA_KEY}' metadata"), source)


def load_json_bounded(text: str | bytes, source: str | Path, what: str, max_chars: int = MAX_METADATA_CHARS) -> Any:
    """``json.loads`` of untrusted metadata with bounds: at most ``max_chars`` characters (refused before
    parsing: a 200 MB string would take 1 GB to parse), at most ``MAX_JSON_DEPTH`` levels of nesting, no
    NaN / Infinity literals. Every refusal is one ``ModelMismatchError`` line."""
    if len(text) > max_chars:
        raise ModelMismatchError(source, f"{what} is {len(text) / 2**20:.1f} MiB, over the "
                                         f"{max_chars / 2**20:.0f} MiB limit; refused without parsing it")
    try:
        obj = json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        raise ModelMismatchError(source, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as e:       # JSONDecodeError, UnicodeDecodeError, a NaN / Infinity literal
        raise ModelMismatchError(source, f"{what} is not valid JSON ({str(e).splitlines()[0][:200]})") from None
    if _depth(obj) > MAX_JSON_DEPTH:
        raise ModelMismatchError(source, f"{what} is nested deeper than {MAX_JSON_DEPTH} levels")
    return obj


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a finite number")


def _depth(obj: Any) -> int:
    """Nesting depth of a parsed JSON value (iterative: a deep value never exhausts the stack)."""
    deepest, stack = 0, [(obj, 1)]
    while stack:
        o, d = stack.pop()
        if isinstance(o, (dict, list)):
            deepest = max(deepest, d)
            if d <= MAX_JSON_DEPTH:
                stack.extend((v, d + 1) for v in (o.values() if isinstance(o, dict) else o))
    return deepest


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
        text = read_capped(path, MAX_SIDECAR_BYTES, "sidecar").decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ModelMismatchError(path, f"sidecar is not readable JSON ({e})") from None
    meta = load_json_bounded(text, path, "sidecar", MAX_SIDECAR_BYTES)
    validate_metadata(meta, path)
    missing = [k for k in SIDECAR_KEYS if k not in meta]
    if missing:
        raise ModelMismatchError(path, f"sidecar lacks keys {missing}")
    for key, ok, expected in _SIDECAR_CHECKS:
        if meta.get(key) is not None and not ok(meta[key]):
            raise ModelMismatchError(path, f"sidecar {key}: expected {expected}, got {_show(meta[key])}")
    return meta


_SIDECAR_CHECKS: tuple[tuple[str, Any, str], ...] = (
    *((k, _is_sha256, "64 lowercase hex digits (a sha256)") for k in ("onnx_sha256", "engine_sha256")),
    *((k, _short_str, "a non-empty string") for k in ("tensorrt_version", "gpu_name", "compute_capability",
                                                       "precision_recipe", "onnx_path")),
    ("profiles", lambda v: isinstance(v, list) and all(isinstance(p, dict) for p in v), "a list of profiles"),
)


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


# ------------------------------------------------------------------------------------------ export sets
# ``mtl export --out DIR`` writes one set: every model file, engine and sidecar, export_report.json/.md and
# ``manifest.json`` (written last, in one commit), all naming one source checkpoint.
EXPORT_FP32_FILE = "model.onnx"
EXPORT_MANIFEST = "manifest.json"
EXPORT_KIND = "mtl export"
# files of an export set (a file like these that the manifest does not list was not made by that export)
EXPORT_SET_PATTERNS = ("*.onnx", "*.onnx.rejected", "*.engine", "*.engine.json", "export_report.json",
                       "export_report.md")
PENDING_REASON = "an interrupted write was not finished: run the same command again to finish it"


def check_export_set(models: list[str | Path]) -> None:
    """Refuse (``ModelMismatchError``, one line) models that do not form one finished export set with their
    folder: a pending commit journal there, a ``manifest.json`` that does not list them (or lists files now
    missing or of another size, or misses a model file present), or a source checkpoint other than that of the
    fp32 ``model.onnx`` beside them. A folder without a manifest (older exports, hand-copied models) is only
    checked for the checkpoint."""
    for folder in dict.fromkeys(Path(m).parent for m in models):
        check_export_folder(folder)
    for m in models:
        check_same_source(Path(m))


def check_export_folder(folder: Path) -> None:
    """No pending commit; when ``manifest.json`` of an export is present, the folder holds exactly its files."""
    from .io import pending_commit

    if pending_commit(folder):
        raise ModelMismatchError(folder, PENDING_REASON)
    listed = read_export_manifest(folder)
    if listed is None:
        return
    man = folder / EXPORT_MANIFEST
    for name, size in listed.items():
        f = folder / name
        if not f.is_file():
            raise ModelMismatchError(f, f"listed in {man.name} but missing: the export set is incomplete "
                                        "(copy the whole folder, or re-export)")
        if f.stat().st_size != size:
            raise ModelMismatchError(f, f"is {f.stat().st_size} bytes but {man.name} records {size}: replaced "
                                        "after the export (re-export with `mtl export --overwrite`)")
    for pattern in EXPORT_SET_PATTERNS:
        for f in sorted(folder.glob(pattern)):
            if f.name not in listed:
                raise ModelMismatchError(f, f"is not part of the export recorded in {man.name}: the folder mixes "
                                            "files of two exports (re-export with `mtl export --overwrite`)")


def read_export_manifest(folder: Path) -> dict[str, int] | None:
    """{file name: size} of an export's ``manifest.json``; None when there is none (or it is another command's)."""
    man = folder / EXPORT_MANIFEST
    if not man.is_file():
        return None
    doc = load_json_bounded(read_capped(man, MAX_SIDECAR_BYTES, "manifest"), man, "manifest", MAX_SIDECAR_BYTES)
    if not isinstance(doc, dict) or doc.get("kind") != EXPORT_KIND:
        return None
    files = doc.get("files")
    ok = isinstance(files, list) and all(isinstance(e, dict) and _short_str(e.get("name")) and "/" not in e["name"]
                                         and _is_int(e.get("size")) for e in files)
    if not ok:
        raise ModelMismatchError(man, "export manifest 'files' must list {name, size, sha256} entries")
    return {e["name"]: e["size"] for e in files}


def check_same_source(model: Path) -> None:
    """``model`` was exported from the same checkpoint as the fp32 ``model.onnx`` in its folder (if any). Its
    metadata is read (bounded: the graph is skipped) and validated here, before any session loads the model."""
    ours = source_checkpoint(model)
    fp32 = model.parent / EXPORT_FP32_FILE
    if model.name == fp32.name or not fp32.is_file():
        return
    ref = source_checkpoint(fp32)
    if ours != ref:
        raise ModelMismatchError(model, f"exported from checkpoint {ours[:12]}... but the fp32 {fp32.name} beside it "
                                        f"from {ref[:12]}...: the folder mixes two exports (re-export them together "
                                        "with `mtl export --overwrite`)")


def source_checkpoint(path: Path) -> str:
    """``source_checkpoint_sha256`` of an ONNX model (its metadata) or an engine (its sidecar)."""
    if path.suffix in (".engine", ".plan", ".trt"):
        return read_sidecar(path)["source_checkpoint_sha256"]
    return parse_metadata(onnx_metadata_text(path), path)["source_checkpoint_sha256"]


def onnx_metadata_text(path: str | Path, key: str = METADATA_KEY) -> str | None:
    """``metadata_props[key]`` read straight from the ONNX protobuf: the top-level fields are walked and skipped
    (the graph and its weights are never read), so this costs a few reads even for a 2 GiB model. A metadata
    entry over the size limit is refused by its length prefix, before it is read."""
    path = Path(path)
    try:
        size = path.stat().st_size
        f = open(path, "rb")
    except OSError as e:
        raise ModelMismatchError(path, f"ONNX model cannot be read ({e.strerror or e})") from None
    if size > MAX_ONNX_BYTES:
        f.close()
        raise ModelMismatchError(path, f"ONNX model is {size / 2**30:.2f} GiB, over the "
                                       f"{MAX_ONNX_BYTES / 2**30:.0f} GiB limit; refused without reading it")
    found, n_fields = None, 0
    with f:
        while (tag := _varint(f, path)) is not None:
            field, wire = tag >> 3, tag & 7
            n_fields += 1
            if field == 0 or n_fields > MAX_ONNX_FIELDS:    # a ModelProto has a dozen top-level fields
                raise ModelMismatchError(path, "not a readable ONNX model (not a ModelProto)")
            if wire == 0:
                _varint(f, path)
            elif wire in (1, 5):
                f.seek(8 if wire == 1 else 4, 1)
            elif wire == 2:
                n = _varint(f, path)
                if n is None or f.tell() + n > size:
                    raise ModelMismatchError(path, "not a readable ONNX model (truncated protobuf)")
                if field != 14:                        # ModelProto.metadata_props
                    f.seek(n, 1)
                    continue
                if n > MAX_METADATA_CHARS + 1024:
                    raise ModelMismatchError(path, f"an ONNX metadata entry is {n / 2**20:.1f} MiB, over the "
                                                   f"{MAX_METADATA_CHARS / 2**20:.0f} MiB limit; refused unread")
                k, v = _string_entry(f.read(n), path)
                found = v if k == key else found
            else:
                raise ModelMismatchError(path, f"not a readable ONNX model (protobuf wire type {wire})")
    return found


def _varint(f, path: Path) -> int | None:
    """One protobuf varint from a file (None at a clean end of file)."""
    value = 0
    for i in range(10):
        b = f.read(1)
        if not b:
            if i == 0:
                return None
            break
        value |= (b[0] & 0x7F) << (7 * i)
        if b[0] < 0x80:
            return value
    raise ModelMismatchError(path, "not a readable ONNX model (bad protobuf varint)")


def _string_entry(buf: bytes, path: Path) -> tuple[str, str]:
    """(key, value) of a ``StringStringEntryProto``."""
    import io as _io

    parts, f = {1: b"", 2: b""}, _io.BytesIO(buf)
    while (tag := _varint(f, path)) is not None:
        n = _varint(f, path) if tag & 7 == 2 else None
        if n is None or f.tell() + n > len(buf):
            raise ModelMismatchError(path, "not a readable ONNX model (bad metadata entry)")
        parts[tag >> 3] = f.read(n)
    try:
        return parts[1].decode("utf-8"), parts[2].decode("utf-8")
    except UnicodeDecodeError:
        raise ModelMismatchError(path, "ONNX metadata is not UTF-8 text") from None


__all__ = [
    "DECODE_OUTPUTS",
    "EXPORT_FP32_FILE",
    "EXPORT_KIND",
    "EXPORT_MANIFEST",
    "EXPORT_SET_PATTERNS",
    "MAX_JSON_DEPTH",
    "MAX_METADATA_CHARS",
    "MAX_ENGINE_BYTES",
    "MAX_ONNX_BYTES",
    "METADATA_FORMAT",
    "METADATA_KEY",
    "OUTPUTS",
    "PRECISIONS",
    "SIDECAR_KEYS",
    "build_metadata",
    "check_export_folder",
    "check_export_set",
    "check_same_source",
    "config_from_metadata",
    "gpu_info",
    "load_json_bounded",
    "onnx_metadata_text",
    "parse_metadata",
    "read_capped",
    "read_export_manifest",
    "read_onnx_metadata",
    "read_sidecar",
    "sha256_capped",
    "sidecar_path",
    "source_checkpoint",
    "validate_metadata",
    "write_onnx_metadata",
    "write_sidecar",
]
