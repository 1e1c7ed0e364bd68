"""`mtl bench`: one table (JSON + markdown) with per-stage latency, parity vs torch and honest skips."""
from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from click.testing import CliRunner
from test_runtime import tiny_artifacts

from mtl.cli import main


@pytest.fixture(scope="module")
def art(tmp_path_factory):
    return tiny_artifacts(tmp_path_factory.mktemp("bench"))


def test_mtl_bench_writes_json_and_markdown_with_parity_and_skips(art, tmp_path):
    out = tmp_path / "results"
    r = CliRunner().invoke(main, ["bench", "--model", str(art["onnx"]), "--checkpoint", str(art["ckpt"]),
                                  "--data", str(art["chunks"]), "--iters", "3", "--warmup", "1", "--threads", "1",
                                  "--out", str(out), "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    (js,) = out.glob("bench_*_torch+ort+ort-fp16+ort-int8+trt.json")
    (md,) = out.glob("bench_*_torch+ort+ort-fp16+ort-int8+trt.md")
    rep = json.loads(js.read_text())
    rows = {row["backend"]: row for row in rep["rows"]}
    assert list(rows) == ["onnxruntime", "onnxruntime-fp16", "onnxruntime-int8", "tensorrt", "torch"]
    assert rows["tensorrt"]["status"].startswith("skipped: ") and "engine" in rows["tensorrt"]["status"]
    assert rows["onnxruntime-fp16"]["status"] == "skipped: no model_fp16.onnx next to model.onnx (mtl export --fp16)"
    for name in ("onnxruntime", "torch"):
        row = rows[name]
        assert row["status"] == "ok"
        for stage in ("decode_png", "bev_raster", "inference", "postprocess", "total"):
            assert set(row["stages"][stage]) == {"mean", "p50", "p90", "p99", "n"}
            assert row["stages"][stage]["n"] == 3
        assert row["throughput_fps"] > 0 and row["peak_rss_mb"] > 0
    par = rows["onnxruntime"]["parity"]
    assert max(par["max_abs_diff"].values()) <= 1e-4 and par["boxes_identical"] == "3/3"
    assert rows["onnxruntime"]["speedup_vs_torch"] > 0
    assert "miou_delta" in par and "map_delta" in par or rows["onnxruntime"]["metrics"].get("reason")
    assert rep["device"]["cpu_model"] and rep["device"]["threads"] == 1 and "onnxruntime" in rep["device"]["libraries"]
    assert rep["matches_model_source"] is True

    text = md.read_text()
    for col in ("backend", "decode_png ms", "bev_raster ms", "h2d ms", "inference ms", "d2h ms", "postprocess ms",
                "total mean", "p50", "p90", "p99", "frames/s", "peak RSS MB", "maxdiff heatmap", "boxes =", "dmIoU"):
        assert col in text, col
    assert "| tensorrt | skipped: " in text and "| tensorrt | skipped: " in r.output


def test_bench_without_checkpoint_marks_torch_skipped(art, tmp_path):
    from mtl.bench import run_bench

    rep = run_bench(art["onnx"], art["chunks"], ("onnxruntime", "torch", "onnxruntime-cuda"), iters=2, warmup=0,
                    threads=1, out_dir=None, progress=False)
    rows = {row["backend"]: row for row in rep["rows"]}
    assert rows["torch"]["status"] == "skipped: no --checkpoint given"
    assert rows["onnxruntime"]["status"] == "ok" and "parity" not in rows["onnxruntime"]
    assert rows["onnxruntime-cuda"]["status"].startswith("skipped: onnxruntime-cuda: ")
    assert rep["parity_note"].startswith("no --checkpoint") and "written" not in rep
