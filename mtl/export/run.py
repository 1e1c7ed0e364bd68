"""``mtl export`` step by step: checkpoint -> DIR/model.onnx (+ one file per requested row of
``mtl.export.variants.VARIANTS``, *.engine), DIR/export_report.json and DIR/export_report.md.

``export_checkpoint(opts)`` runs the steps in order; each records what it did in the report dict and prints
its line(s) through ``echo``:

- ``load``              the checkpoint -> (model, cfg, sha256)
- ``parity_frames``     real frames for the parity report (--val-data, else --calib-data)
- ``export_fp32``       torch -> ONNX (dynamo) -> onnxslim (kept only if outputs are identical) -> metadata,
                        ``onnx.checker``, atomic write (``save_variant``), static TensorRT check (``check_tensorrt``)
- ``fp32_parity``       torch vs onnxruntime, gated on --atol: a failure rejects model.onnx and stops the export
- ``calibration``       INT8 activation ranges (``mtl.export.calibration``: frames sampled across scenes,
                        --calib-method), once for every calibrated row, reused from OUT/calibration_cache.json
                        when the fp32 model, the frames and the method are unchanged
- ``build_variants``    each requested row's builder, saved and checked like fp32
- ``variant_parity``    parity of each variant vs torch (informational for metric-gated rows)
- ``metric_gate``       mIoU / mAP drop vs fp32 of the metric-gated rows, one pass over --val-data
- ``int8_precision``    per-unit sensitivity (--sensitivity) and, for an INT8 row that failed its gate, the mixed
                        precision search (``mtl.export.mixed``); a passing mix replaces the row's file
- ``reject_failed``     failed variants are renamed ``*.rejected`` so no runtime picks them up
- ``build_engines``     TensorRT engines of the rows whose target is TensorRT (--trt)
- ``write_report``      always, also when a step raised; that error is re-raised afterwards
- ``commit_set``        the whole set moves into DIR as one commit (``mtl.io.commit_files``)

One export is one set: every step writes into a staging folder ``DIR/.export-staging-<pid>/``; at the end
the models, engines + sidecars, ``*.rejected`` files, export_report.md / .json and ``manifest.json`` (each
file's size and sha256, the checkpoint's sha256; written LAST) replace whatever export DIR held, in one commit
whose journal lets a killed commit be finished. So DIR always holds one complete set, all naming one
checkpoint: a killed export leaves the previous set (or nothing), never a model beside a report that did not
check it. An export already in DIR is refused without ``--overwrite`` (``OutputError``, exit 9); with it, the
old set's files that the new one lacks (e.g. ``model_fp16.onnx`` when there is no ``--fp16`` now) are removed
by the commit. A failed export (parity, gate, another error) is committed too, as a set whose report says
FAIL and why; when even the report cannot be written (disk full), DIR keeps its previous set and the
original error is what is raised. ``mtl export`` holds ``DIR/.mtl.lock`` while it runs.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .. import __version__
from ..config import Config, sha256_file
from ..contract import (
    EXPORT_KIND,
    EXPORT_MANIFEST,
    EXPORT_SET_PATTERNS,
    MAX_SIDECAR_BYTES,
    load_json_bounded,
    read_capped,
)
from ..errors import MtlError, OutputError, ParityError
from ..io import (
    OutputLock,
    commit_files,
    pending_commit,
    recover_commit,
    remove_stale_temps,
    write_bytes_atomic,
    write_json_atomic,
)
from . import parity as par
from .onnx_io import ort_session, save_proto_atomic
from .options import ExportOptions
from .report import gate_line, parity_line, render_markdown, wrote_line
from .variants import FP32, GATED_PRECISIONS, Variant, variant

Echo = Callable[[str], None]
Built = tuple[Variant, Path, Any, dict]    # (row, written file, ModelProto, builder info)
STAGING_PREFIX = ".export-staging-"
REPORT_FILES = ("export_report.md", "export_report.json")


@dataclass(frozen=True)
class Job:
    """What every step reads: the options, the loaded checkpoint, the report it fills in and the printer."""

    opts: ExportOptions
    model: Any                  # torch model, eval mode
    cfg: Config
    report: dict[str, Any]      # each step adds its entries
    echo: Echo
    work: Path                  # the staging folder every step writes into (committed to opts.out_dir at the end)


def export_checkpoint(opts: ExportOptions, echo: Echo = print) -> dict[str, Any]:
    """``mtl export``. Raises ``ParityError`` (after committing the set with its report) when fp32 parity or a
    variant's gate fails, with the failed files renamed ``*.rejected``; any other error is re-raised after the
    set with its report is committed (module docstring). Returns the report."""
    t_start = time.perf_counter()
    opts.validate()
    if opts.trt:
        from .tensorrt_build import check_available

        check_available()      # fail before any work: one line saying what is missing
    out = opts.out_dir
    with OutputLock(out, "mtl export"):
        finished = prepare_out_dir(opts, echo)
        if finished is not None:
            return finished
        model, cfg, ckpt_sha = load(opts)
        work = out / f"{STAGING_PREFIX}{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        job = Job(opts, model, cfg, new_report(opts, ckpt_sha), echo, work)
        try:
            run_steps(job)
        except Exception as e:      # re-raised once the set with its report is committed
            raise_after_report(job, e, t_start)
        except BaseException:       # Ctrl-C: keep the previous set, drop the unfinished one
            drop_staging(work, out)
            raise
        commit_set(job, t_start)
    if job.report["failures"]:
        raise ParityError(out / "export_report.json", "; ".join(job.report["failures"]))
    echo(wrote_line(job.report))
    return job.report


def prepare_out_dir(opts: ExportOptions, echo: Echo) -> dict[str, Any] | None:
    """Under the lock: finish an interrupted commit, remove what dead exports left, and refuse an export already
    there unless ``--overwrite``. Returns the report when the interrupted commit was this very export."""
    out = opts.out_dir
    recovered = recover_commit(out)
    for d in out.glob(f"{STAGING_PREFIX}*"):
        shutil.rmtree(d, ignore_errors=True)     # we hold the lock: their writers are dead
    remove_stale_temps(out)
    kind = manifest_kind(out)
    if kind not in (None, EXPORT_KIND):
        raise OutputError(out, f"holds another command's output ({EXPORT_MANIFEST} of {kind}); choose another --out")
    if recovered and same_export(opts):
        report = json.loads((out / "export_report.json").read_text())
        echo(f"finished the interrupted commit of this export in {out}")
        if not report.get("passed"):
            raise ParityError(out / "export_report.json", "; ".join(report.get("failures") or [])
                              or str(report.get("error") or "the export failed"))
        echo(wrote_line(report))
        return report
    old = old_set_names(out)
    if old and not opts.overwrite:
        shown = ", ".join(old[:4]) + (", ..." if len(old) > 4 else "")
        raise OutputError(out, f"already holds an export ({shown}); pass --overwrite to replace it (the old set "
                               "stays until the new one is complete) or choose another --out")
    return None


def same_export(opts: ExportOptions) -> bool:
    """The set in ``out_dir`` was made from this checkpoint with these options."""
    try:
        man = json.loads((opts.out_dir / EXPORT_MANIFEST).read_text())
        return (man.get("checkpoint_sha256") == sha256_file(opts.checkpoint)
                and man.get("options") == opts.to_report())
    except (OSError, ValueError, AttributeError):
        return False


def manifest_kind(out: Path) -> str | None:
    """What wrote ``OUT/manifest.json``: its "kind", "an unreadable manifest", or None without one."""
    man = out / EXPORT_MANIFEST
    if not man.is_file():
        return None
    try:
        doc = load_json_bounded(read_capped(man, MAX_SIDECAR_BYTES, "manifest"), man, "manifest", MAX_SIDECAR_BYTES)
    except MtlError:
        return "an unreadable manifest"
    return str(doc.get("kind")) if isinstance(doc, dict) and doc.get("kind") else "an unknown command"


def old_set_names(out: Path) -> list[str]:
    """The files of an export already in ``out`` (models, engines, sidecars, reports, manifest): what a new set
    replaces. Only names of those kinds are ever removed, whatever an old manifest lists."""
    names = {p.name for pattern in (*EXPORT_SET_PATTERNS, EXPORT_MANIFEST) for p in out.glob(pattern) if p.is_file()}
    return sorted(names)


def run_steps(job: Job) -> None:
    """The steps in order (module docstring); each variant is checked and parity-tested after all are built."""
    samples = parity_frames(job)
    proto, meta = export_fp32(job, samples)
    fp32_sess = ort_session(job.work / FP32.file)
    fp32_parity(job, fp32_sess, samples)
    calib = calibration(job, proto)
    built = build_variants(job, proto, meta, calib)
    sessions = {"fp32": fp32_sess}
    for v, path, vproto, info in built:
        check_tensorrt(job, v, vproto, path, info)
        sessions[v.name] = ort_session(path)
        if job.opts.parity:
            variant_parity(job, v, sessions[v.name], samples)
    metric_gate(job, [v for v, *_ in built if v.check == "metrics"], sessions)
    int8_precision(job, built, sessions, calib, meta, samples)
    reject_failed(job.report, built)
    if job.opts.trt:
        build_engines(job)


# ------------------------------------------------------------------------------------------- steps


def load(opts: ExportOptions) -> tuple[Any, Config, str]:
    """(model, cfg, sha256 of the checkpoint file)."""
    from ..model import load_checkpoint

    model, cfg, _ = load_checkpoint(opts.checkpoint)
    return model, cfg, sha256_file(opts.checkpoint)


def new_report(opts: ExportOptions, ckpt_sha: str) -> dict[str, Any]:
    import platform

    import onnx
    import torch

    return {
        "mtl_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "checkpoint": str(opts.checkpoint), "checkpoint_sha256": ckpt_sha, "out_dir": str(opts.out_dir),
        "options": opts.to_report(),
        "environment": {"python": platform.python_version(), "torch": torch.__version__, "onnx": onnx.__version__,
                        "onnxruntime": _ort_version()},
        "variants": {}, "engines": {}, "failures": [], "timings_s": {},
    }


def parity_frames(job: Job) -> list[dict]:
    """The real frames every parity report runs on (none with --no-parity)."""
    if not job.opts.parity:
        return []
    samples = list(par.FrameSource(job.opts.parity_data, job.cfg, max_frames=job.opts.parity_frames))
    job.report["parity_data"] = str(job.opts.parity_data)
    return samples


def export_fp32(job: Job, samples: list[dict]) -> tuple[Any, dict[str, Any]]:
    """torch -> fp32 ONNX (slimmed), written with its metadata and checked; returns (proto, metadata)."""
    from ..contract import build_metadata
    from .onnx_export import export_onnx_proto, opset_of

    o = job.opts
    job.echo(f"exporting {o.checkpoint.name} -> ONNX (dynamo, opset {o.opset}, decode={o.decode}, "
             f"batch={o.batch_label}) ...")
    proto, info = export_onnx_proto(job.model, job.cfg, opset=o.opset, decode=o.decode, batch=o.batch,
                                    dynamic_batch=o.dynamic)
    job.report["timings_s"]["torch_onnx_export"] = info["export_time_s"]
    if o.slim:
        proto = slim(job, proto, samples)
    meta = build_metadata(job.cfg.to_dict(), batch="batch" if o.dynamic else o.batch, decode=o.decode,
                          precision=FP32.precision, opset=opset_of(proto),
                          source_checkpoint_sha256=job.report["checkpoint_sha256"])
    path = save_variant(FP32, proto, meta, job.work)
    job.report["opset"] = opset_of(proto)
    check_tensorrt(job, FP32, proto, path, {**info, "checker": "full_check ok"})
    return proto, meta


def slim(job: Job, proto: Any, samples: list[dict]) -> Any:
    """onnxslim, kept only when every output is identical on a real (else a random) batch."""
    from .onnx_export import example_inputs, slim_proto

    feeds = (next(par.batched(samples, job.opts.run_batch))[0] if samples else
             {k: v.numpy() for k, v in zip(("image", "bev"), example_inputs(job.cfg, job.opts.run_batch))})
    proto, info = slim_proto(proto, feeds)
    job.report["slim"] = info
    job.echo(f"onnxslim: {info['nodes_before']} -> {info['nodes_after']} nodes, "
             f"{'applied' if info['applied'] else 'not applied'} ({info['reason']})")
    return proto


def save_variant(v: Variant, proto: Any, fp32_meta: dict[str, Any], out_dir: Path) -> Path:
    """The variant's metadata, ``onnx.checker`` (full), then OUT/<file> written atomically."""
    import onnx

    from ..contract import write_onnx_metadata
    from .onnx_export import opset_of

    # a variant may raise the opset (the TensorRT INT8 recipe: 19 for fp16 Q/DQ): record its own
    write_onnx_metadata(proto, {**v.metadata(fp32_meta), "opset": opset_of(proto)})
    onnx.checker.check_model(proto, full_check=True)
    return save_proto_atomic(proto, out_dir / v.file)


def check_tensorrt(job: Job, v: Variant, proto: Any, path: Path, info: dict[str, Any]) -> None:
    """Static TensorRT check of a written variant; creates its report entry and prints the findings."""
    from .trt_check import check_model, format_findings

    findings = check_model(proto, profile=job.opts.profile)
    job.report["variants"][v.name] = variant_entry(path, proto, findings, info)
    if v.target == "tensorrt":
        job.echo(format_findings(findings, f"TensorRT compatibility ({v.name})"))
    else:    # UINT8 / non-zero zero points by design: one summary line
        n_err = sum(f["level"] == "error" for f in findings)
        job.echo(f"TensorRT compatibility ({v.name}): not a TensorRT model by design ({n_err} finding(s), "
                 "UINT8 activations with zero points; onnxruntime CPU only; details in export_report.json)")


def fp32_parity(job: Job, sess: Any, samples: list[dict]) -> None:
    """Gated fp32 parity; on failure model.onnx becomes model.onnx.rejected and ParityError stops the export."""
    entry = job.report["variants"][FP32.name]
    if not job.opts.parity:
        entry["parity"] = None
        job.echo("parity: skipped (--no-parity)")
        return
    t0 = time.perf_counter()
    rep = variant_parity(job, FP32, sess, samples)
    job.report["timings_s"]["parity_fp32"] = round(time.perf_counter() - t0, 3)
    if not rep["passed"]:
        entry["status"] = "rejected"
        entry["path"] = reject(job.work / entry["path"])
        raise ParityError(job.opts.out_dir / FP32.file, "; ".join(rep["failures"]))


def variant_parity(job: Job, v: Variant, sess: Any, samples: list[dict]) -> dict[str, Any]:
    """torch vs the variant's session on the parity frames: gated on --atol for parity-checked rows,
    informational otherwise (only the in-graph decode consistency can fail it then)."""
    o = job.opts
    rep = par.parity_report(job.model, job.cfg, sess, samples, decode=o.decode, batch=o.run_batch, atol=o.atol,
                            gate=v.check == "parity")
    job.report["variants"][v.name]["parity"] = rep
    job.echo(parity_line(v.name, rep))
    job.report["failures"].extend(f"{v.name} parity: {f}" for f in rep["failures"])
    return rep


def calibration(job: Job, fp32_proto: Any) -> Any:
    """The calibrated rows' ``Calibration`` (pre-processed fp32 model + activation ranges), None when no row
    needs one. Frames are sampled across the scenes of --calib-data; loaded only when the cache misses."""
    o = job.opts
    if not any(v.calibrated for v in o.selected):
        return None
    from .calibration import CACHE_FILE, calibrate, sample_across_scenes
    from .quantize import pre_process

    t0 = time.perf_counter()
    model, pre = pre_process(fp32_proto)
    frames = par.FrameSource(o.calib_data, job.cfg, max_frames=o.calib_frames, select=sample_across_scenes)
    ids = frames.selected_ids
    # read from the committed set, write into the new one (staging): a re-export keeps the cache
    calib = calibrate(model, lambda: [f for f, _ in par.batched(frames, o.run_batch)], ids,
                      job.report["variants"][FP32.name]["sha256"], o.calib_method, o.calib_percentile,
                      o.out_dir / CACHE_FILE, job.work / CACHE_FILE)
    calib.info.update(pre)
    job.report["calibration"] = {**calib.info, "data": str(o.calib_data), "frame_ids": ids}
    job.report["timings_s"]["calibration"] = round(time.perf_counter() - t0, 3)
    job.echo(f"calibration: {o.calib_method} over {len(ids)} frame(s) from {calib.info['scenes']} scene(s) of "
             f"{o.calib_data}, {calib.info['tensors']} tensors; cache {calib.info['cache']} "
             f"({job.report['timings_s']['calibration']:.1f} s)")
    return calib


def build_variants(job: Job, fp32_proto: Any, fp32_meta: dict[str, Any], calib: Any = None) -> list[Built]:
    """Each requested row built from the fp32 proto and saved; its build time lands in "timings_s"."""
    o = job.opts
    built: list[Built] = []
    for v in o.selected:
        t0 = time.perf_counter()
        proto, info = v.build(fp32_proto, calib if v.calibrated else None, o.exclude_heads_int8)
        if v.calibrated:
            info.update(calibration_data=str(o.calib_data), calibration_frames=calib.info["frames"])
        path = save_variant(v, proto, {**fp32_meta, **int8_metadata(info)}, job.work)
        job.report["timings_s"][v.timing_key] = round(time.perf_counter() - t0, 3)
        built.append((v, path, proto, info))
    return built


def int8_metadata(info: dict[str, Any]) -> dict[str, Any]:
    """ONNX metadata entries of an INT8 build (none for other rows): calibration method, float units, MAC share."""
    if "int8_mac_share" not in info:
        return {}
    return {"int8_calibration": info["calibration"].get("method"), "int8_float_nodes": list(info["float_nodes"]),
            "int8_mac_share": info["int8_mac_share"]}


def metric_gate(job: Job, gated: list[Variant], sessions: dict[str, Any]) -> None:
    """mIoU / mAP of fp32 and every metric-gated row in one pass; a drop beyond the allowed one fails."""
    if not gated:
        return
    variants, o = job.report["variants"], job.opts
    if not o.parity:
        for v in gated:
            variants[v.name]["gate"] = None
        job.echo(f"metric gate: skipped (--no-parity): the {GATED_PRECISIONS} variants are NOT validated")
        return
    t0 = time.perf_counter()
    frames = par.FrameSource(o.val_data, job.cfg, max_frames=o.gate_frames)
    job.echo(f"metric gate: evaluating fp32 + {', '.join(v.name for v in gated)} on {len(frames)} frame(s) of "
             f"{o.val_data} ...")
    metrics = par.evaluate_sessions({k: sessions[k] for k in ("fp32", *(v.name for v in gated))}, frames, job.cfg,
                                    o.run_batch, progress=o.progress)
    job.report["timings_s"]["metric_gate"] = round(time.perf_counter() - t0, 3)
    variants["fp32"]["metrics"] = metrics["fp32"]
    for v in gated:
        gate = par.metric_gate(metrics["fp32"], metrics[v.name], o.max_drop_miou, o.max_drop_map)
        variants[v.name]["metrics"] = metrics[v.name]
        variants[v.name]["gate"] = gate
        job.echo(gate_line(v.name, gate))
        job.report["failures"].extend(f"{v.name} gate: {f}" for f in gate["failures"])


def int8_precision(job: Job, built: list[Built], sessions: dict[str, Any], calib: Any, fp32_meta: dict[str, Any],
                   samples: list[dict]) -> None:
    """Per-unit sensitivity (--sensitivity) and mixed precision (a calibrated row that failed its gate) by
    ``mtl.export.mixed.tune_int8``; the tables go into the row's report entry. A passing mix replaces the
    row's file, which is then checked, parity-tested and gated again like a freshly built row."""
    o = job.opts
    for i, (v, path, _, _) in enumerate(built):
        gate = job.report["variants"][v.name].get("gate")
        if not v.calibrated or not gate or not (o.sensitivity or (o.mixed_precision and not gate["passed"])):
            continue
        from .mixed import tune_int8
        from .quantize import plan_int8

        t0 = time.perf_counter()
        tables, mix, info = tune_int8(
            plan_int8(calib, v.target, o.exclude_heads_int8), fp32_session=sessions[FP32.name],
            int8_session=sessions[v.name], probe=list(par.FrameSource(o.val_data, job.cfg, o.sensitivity_frames)),
            gate_frames=par.FrameSource(o.val_data, job.cfg, max_frames=o.gate_frames), cfg=job.cfg,
            batch=o.run_batch, fp32_metrics=job.report["variants"][FP32.name]["metrics"], full_gate=gate,
            max_drop_miou=o.max_drop_miou, max_drop_map=o.max_drop_map, sensitivity=o.sensitivity,
            mixed=o.mixed_precision, top=o.sensitivity_top, echo=job.echo, name=v.name)
        if mix is not None:
            info.update(calibration_data=str(o.calib_data), calibration_frames=calib.info["frames"])
            path = save_variant(v, mix, {**fp32_meta, **int8_metadata(info)}, job.work)
            check_tensorrt(job, v, mix, path, info)               # a fresh report entry for the new file
            new_gate = dict(tables["mixed_precision"]["gate"])
            job.report["variants"][v.name].update(metrics=new_gate.pop("metrics"), gate=new_gate)
            job.report["failures"] = [f for f in job.report["failures"]
                                      if not f.startswith((f"{v.name} gate:", f"{v.name} parity:"))]
            job.report["failures"].extend(f"{v.name} gate: {f}" for f in new_gate["failures"])
            sessions[v.name] = ort_session(path)
            variant_parity(job, v, sessions[v.name], samples)
            job.echo(gate_line(v.name, new_gate))
            built[i] = (v, path, mix, info)
        entry = job.report["variants"][v.name]
        entry["sensitivity"] = {k: tables[k] for k in ("units", "proxy", "keep_float") if k in tables}
        entry["mixed_precision"] = tables.get("mixed_precision")
        job.report["timings_s"][f"{v.name}_precision"] = round(time.perf_counter() - t0, 3)


def reject_failed(report: dict[str, Any], built: list[Built]) -> None:
    """Rename every variant that failed its gate or its parity to ``*.rejected``."""
    for v, path, *_ in built:
        entry = report["variants"][v.name]
        if (entry.get("gate") and not entry["gate"]["passed"]) or (entry.get("parity") or {}).get("failures"):
            entry["status"] = "rejected"
            entry["path"] = reject(path)


def build_engines(job: Job) -> None:
    """A TensorRT engine (+ sidecar) for every accepted variant meant for TensorRT."""
    from .tensorrt_build import build_engine
    from .trt_check import has_errors

    o = job.opts
    cache = o.timing_cache or o.out_dir / "timing.cache"
    for name, entry in job.report["variants"].items():
        if entry["status"] != "ok" or variant(name).target != "tensorrt":
            continue
        if has_errors(entry["trt_check"]):
            job.report["failures"].append(f"{name}: not built with TensorRT (trt_check errors)")
            continue
        onnx_file = job.work / entry["path"]
        engine = onnx_file.with_suffix(".engine")
        job.echo(f"building TensorRT engine {engine.name} ...")
        side = build_engine(onnx_file, engine, profile=o.profile, timing_cache=cache)
        job.report["engines"][name] = {"path": engine.name, "sidecar": engine.name + ".json",
                                       **{k: side[k] for k in ("tensorrt_version", "gpu_name", "compute_capability",
                                                               "precision_recipe", "build_time_s")}}


def write_report(report: dict[str, Any], work: Path, t_start: float, failed: bool = False) -> None:
    """export_report.json + .md (atomic) into the staging folder."""
    report["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
    report["passed"] = not report["failures"] and not failed
    write_json_atomic(work / "export_report.json", report)
    write_bytes_atomic(work / "export_report.md", render_markdown(report).encode())


def commit_set(job: Job, t_start: float, failed: bool = False) -> None:
    """Report, then manifest (last), then the whole staging folder replaces the set in ``out_dir`` in one commit."""
    work, out = job.work, job.opts.out_dir
    write_report(job.report, work, t_start, failed)
    models = sorted(p.name for p in work.iterdir() if p.is_file() and not p.name.startswith(".")
                    and p.name not in REPORT_FILES)
    names = [*models, *REPORT_FILES]
    write_json_atomic(work / EXPORT_MANIFEST, {
        "kind": EXPORT_KIND, "mtl_version": __version__, "checkpoint": job.report["checkpoint"],
        "checkpoint_sha256": job.report["checkpoint_sha256"], "passed": job.report["passed"],
        "options": job.opts.to_report(),
        "files": [{"name": n, "size": (work / n).stat().st_size, "sha256": sha256_file(work / n)} for n in names]})
    commit_files(work, out, [*names, EXPORT_MANIFEST], remove=old_set_names(out))


def raise_after_report(job: Job, err: Exception, t_start: float) -> None:
    """Commit the failed set with its report, then raise ``err`` naming the files in ``out_dir``. When the
    environment refused a write (disk full, read-only...), or the report itself cannot be written, the previous
    set stays untouched and ``err`` (never the report's error) is raised."""
    from ..io import storage_error

    if not isinstance(err, ParityError):
        job.report["error"] = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    if isinstance(err, OSError) and storage_error(err) is not None:
        drop_staging(job.work, job.opts.out_dir)
        raise public_error(err, job.work, job.opts.out_dir) from None
    try:
        commit_set(job, t_start, failed=True)
    except Exception as e:  # noqa: BLE001 - reported in one line; the original error is the one that matters
        job.echo(f"note: the export report could not be written ({str(e).splitlines()[0][:200]}); "
                 f"{job.opts.out_dir} keeps what it held before")
        drop_staging(job.work, job.opts.out_dir)
    raise public_error(err, job.work, job.opts.out_dir) from None


def public_error(err: Exception, work: Path, out: Path) -> Exception:
    """``err`` naming ``out/<file>`` instead of the staging folder's copy of it."""
    def public(path: str | None) -> str | None:
        if path is None or not str(path).startswith(str(work)):
            return path
        return str(out / os.path.relpath(path, work))

    if isinstance(err, OSError):
        err.filename = public(err.filename)
        return err
    if isinstance(err, MtlError) and err.path and str(err.path).startswith(str(work)):
        new = type(err)(public(err.path), err.reason)
        new.__traceback__ = err.__traceback__
        return new
    return err


def drop_staging(work: Path, out: Path) -> None:
    """Remove an uncommitted staging folder (kept while a commit journal still needs it)."""
    if not pending_commit(out):
        shutil.rmtree(work, ignore_errors=True)


# ----------------------------------------------------------------------------------------- helpers


def variant_entry(path: Path, proto: Any, findings: list[dict], info: dict[str, Any]) -> dict[str, Any]:
    return {"path": path.name, "sha256": sha256_file(path), "size_bytes": path.stat().st_size,
            "nodes": len(proto.graph.node),
            "op_types": dict(sorted(Counter(n.op_type for n in proto.graph.node).items())),
            "trt_check": findings, "info": info, "status": "ok"}


def reject(path: Path) -> str:
    """Move a failed artefact aside (``<name>.rejected``) so the runtime never picks it up."""
    dst = path.with_name(path.name + ".rejected")
    if path.exists():
        os.replace(path, dst)
    return dst.name


def _ort_version() -> str:
    try:
        import onnxruntime

        return onnxruntime.__version__
    except ImportError:
        return "missing"
