"""`mtl report`: one static site from a real (tiny) training run, export, infer outputs and bench results,
checked for content, refusals / atomic replacement, and rendered in a real browser (headless Chromium):
every image loads, no link is broken, the console stays silent."""
from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("matplotlib")

from click.testing import CliRunner
from conftest import write_tiny_chunks

from mtl.cli import main
from mtl.errors import DataError, OutputError
from mtl.report import build_report, detect_kind
from mtl.report.bench import read_bench
from mtl.report.infer import read_infer

OLD_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / \
    "bench_20261201-103150_torch+ort+ort-fp16+ort-int8+ort-int8cpu+trt.json"      # an earlier bench's flat result


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A 2-epoch tiny run with debug images, `mtl export` (fp32 + fp16), `mtl infer` with overlays and `mtl infer
    --eval`, `mtl bench` single-stream (its result folder) and constant-stream (its JSON), and a result of the
    earlier bench kept in the repository (flat file, percentiles only)."""
    from test_runtime import runtime_cfg

    from mtl.bench import run_bench
    from mtl.export.options import ExportOptions
    from mtl.export.run import export_checkpoint
    from mtl.runtime import Pipeline, iter_frames
    from mtl.runtime.infer import infer_directory
    from mtl.runtime.scoring import score_results
    from mtl.train import train

    root = tmp_path_factory.mktemp("report")
    cfg = runtime_cfg(**{"train.epochs": 2, "train.viz_every": 1, "train.batch_size": 2})
    train_dir = write_tiny_chunks(root / "train", cfg, n_frames=4, seed=1)
    val = write_tiny_chunks(root / "val", cfg, n_frames=3, seed=3)
    train(cfg, train_dir, root / "run", val=val, progress=False)
    export_checkpoint(ExportOptions(root / "run" / "best.pt", root / "export", variants=("fp16",), val_data=val,
                                    parity_frames=2, gate_frames=2, progress=False), echo=lambda m: None)
    onnx = root / "export" / "model.onnx"
    infer_directory(onnx, val, root / "infer", backend="onnxruntime", threads=1, overlay_images=True, progress=False)
    summary = infer_directory(onnx, val, root / "infer_eval", backend="onnxruntime", threads=1, progress=False,
                              evaluate=True)
    with Pipeline.open(onnx, "onnxruntime", threads=1) as pipe:
        pairs = [(pipe.run_frame(f), f) for f in iter_frames(val, pipe.cfg, with_gt=True)]
        direct = score_results(pairs, pipe.cfg, pipe.spec.heatmap_activation)
    assert summary["metrics"] == direct                       # infer --eval: the metrics of score_results
    single = run_bench(onnx, val, ("onnxruntime",), queries=6, warmup=1, threads=1, n_frames=2,
                       out_dir=root / "bench", progress=False, log=lambda m: None)
    stream = run_bench(onnx, val, ("onnxruntime", "onnxruntime-fp16"), queries=5, warmup=1, threads=1, n_frames=2,
                       out_dir=root / "bench", progress=False, log=lambda m: None, scenario="constant-stream",
                       rate_hz=40.0, deadline_ms=50.0)
    return {"root": root, "run": root / "run", "export": root / "export", "infer": root / "infer",
            "infer_eval": root / "infer_eval", "bench_dir": Path(single["written"]["dir"]),
            "bench_json": Path(stream["written"]["json"]), "bench_old": OLD_BENCH, "metrics": summary["metrics"],
            "single": single, "stream": stream, "cfg": cfg}


def _all(inputs) -> list[Path]:
    return [inputs[k] for k in ("run", "export", "infer", "infer_eval", "bench_dir", "bench_json", "bench_old")]


class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.src, self.href, self.ids = [], [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "img":
            self.src.append(a.get("src"))
        if tag == "a" and a.get("href"):
            self.href.append(a["href"])


def _refs(site: Path) -> _Refs:
    p = _Refs()
    p.feed((site / "index.html").read_text())
    return p


@pytest.fixture(scope="module")
def site(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("site") / "report"
    r = CliRunner().invoke(main, ["report", *map(str, _all(inputs)), "--out", str(out)], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    assert r.output.startswith(f"report: {out}/index.html (run ") and r.output.count("\n") == 1
    return out


def test_detect_kind_and_readers(inputs, tmp_path):
    assert detect_kind(inputs["run"]) == ("run", inputs["run"])
    assert detect_kind(inputs["run"] / "metrics.jsonl") == ("run", inputs["run"])
    assert detect_kind(inputs["export"]) == ("export", inputs["export"])
    assert detect_kind(inputs["infer"])[0] == detect_kind(inputs["infer_eval"])[0] == "infer"
    assert detect_kind(inputs["bench_json"]) == ("bench", inputs["bench_json"])
    assert detect_kind(inputs["bench_dir"]) == ("bench", inputs["bench_dir"])
    assert detect_kind(inputs["bench_old"]) == ("bench", inputs["bench_old"])
    # one bench reader: a result folder of `mtl bench` (system.json beside), its JSON, the folder above, old flat files
    new, = read_bench(inputs["bench_dir"])
    assert new["name"] == inputs["bench_dir"].name and new["report"]["scenario"] == "single-stream"
    assert new["system"] == json.loads((inputs["bench_dir"] / "system.json").read_text())
    assert len(new["report"]["rows"][0]["latencies_ms"]) == 6
    stream, = read_bench(inputs["bench_json"])
    assert stream["name"] == inputs["bench_json"].parent.name and stream["report"]["scenario"] == "constant-stream"
    assert sorted(r["name"] for r in read_bench(inputs["bench_dir"].parent)) == sorted(
        [inputs["bench_dir"].name, inputs["bench_json"].parent.name])
    old, = read_bench(inputs["bench_old"])
    assert old["name"] == OLD_BENCH.stem and old["system"]["cpu_count"] >= 1
    assert "latency" not in old["report"]["rows"][0]
    # one infer reader: per-frame boxes, id maps, overlays when written, metrics when present
    run = read_infer(inputs["infer"])
    assert len(run["frames"]) == 3 and run["metrics"] is None
    assert all(f["semantic_png"].parent.name == "frames" and f["overlay_png"].is_file() for f in run["frames"])
    assert all(f["semantic_color_png"].is_file() and f["modality"] == "camera+lidar" for f in run["frames"])
    ev = read_infer(inputs["infer_eval"])
    assert ev["metrics"]["frames"] == 3 and all(f["overlay_png"] is None for f in ev["frames"])
    # an output of an older mtl (frame files beside summary.json) still reads
    flat = tmp_path / "flat"
    shutil.copytree(inputs["infer"] / "frames", flat)
    shutil.copy(inputs["infer"] / "summary.json", flat)
    old_run = read_infer(flat)
    assert [f["name"] for f in old_run["frames"]] == [f["name"] for f in run["frames"]]
    assert all(f["overlay_png"].parent == flat for f in old_run["frames"])
    (flat / f"{run['frames'][1]['name']}.json").unlink()
    with pytest.raises(DataError, match="lists frame 'tiny__3_001' but tiny__3_001.json is not there"):
        read_infer(flat)
    (tmp_path / "x").mkdir()
    with pytest.raises(DataError, match="not a training run .*, an export folder"):
        detect_kind(tmp_path / "x")
    r = CliRunner().invoke(main, ["report", str(tmp_path / "x"), "--out", str(tmp_path / "o")])
    assert r.exit_code == 4 and r.output.startswith(f"error: {tmp_path / 'x'}: not a training run")
    assert not (tmp_path / "o" / "index.html").exists()


def test_site_contents(site, inputs):
    page = (site / "index.html").read_text()
    manifest = json.loads((site / "mtl_report.json").read_text())
    assert [i["kind"] for i in manifest["inputs"]] == ["run", "export", "infer", "infer", "bench", "bench", "bench"]
    assert sorted(f["name"] for f in manifest["files"]) == sorted(
        str(p.relative_to(site)) for p in site.rglob("*") if p.is_file() and not p.name.startswith(".")
        and p.name != "mtl_report.json")
    # run: curves, per-class IoU / AP charts and tables per epoch, debug images of both epochs
    assert (site / "img/run-1/curves.png").is_file() and (site / "img/run-1/per_class_ap.png").is_file()
    assert "Validation IoU per class and epoch" in page and "<th>AP \\ epoch</th><th>1</th><th>2</th>" in page
    for epoch in ("epoch_001", "epoch_002"):
        assert (site / f"img/run-1/debug/{epoch}/item0_bev.png").read_bytes() == \
            (inputs["run"] / "debug" / epoch / "item0_bev.png").read_bytes()
    # export: variants with parity and gate, the TensorRT check as counts + first findings, the full reports
    assert "model_fp16.onnx" in page and "TensorRT compatibility (static check)" in page
    assert re.search(r"<td>fp16</td>.*?PASS", page, re.S)
    md = (site / "files/export-2/export_report.md").read_bytes()
    assert md == (inputs["export"] / "export_report.md").read_bytes()
    # infer: a camera image and a BEV view per frame, the per-frame table; metrics where present
    for anchor in ("infer-3", "infer-4"):
        assert len(list((site / "img" / anchor).glob("*_camera.png"))) == 3
        assert len(list((site / "img" / anchor).glob("*_bev.png"))) == 3
    assert (site / "img/infer-3/000_camera.png").read_bytes() == \
        (inputs["infer"] / "frames" / "tiny__3_000_overlay.png").read_bytes()    # infer's own overlay is used
    assert page.count("Detections per frame") == 2 and page.count("Metrics against the frames' ground truth") == 1
    assert "3 frames (3 camera+lidar)" in page and "<th>modality</th>" in page
    assert "(score &gt; 0.300, at most 20 per frame)" in page
    m = inputs["metrics"]
    assert f"<td class=\"num\">{m['pixel_acc']:.4f}</td>" in page
    # bench: the new results (per-query latencies: a real CDF), the old flat one (percentiles), the scenarios
    single, stream = (inputs[k]["rows"][0] for k in ("single", "stream"))
    assert "Latency distribution per backend, single-stream (from the per-frame latencies)" in page
    assert "Latency distribution per backend, constant-stream (from the per-frame latencies)" in page
    assert "(from the reported percentiles: the result has no per-frame latencies)" in page
    assert page.count("_latency.png") == 2 * 3                                    # one chart per result (img + link)
    lat = single["latency"]
    assert re.search(r"<td>onnxruntime</td><td>ok</td>" + "".join(
        rf'<td class="num">{lat[k]:.4f}</td>' for k in ("mean", "p50", "p90", "p99", "p99.9")), page)
    cs = stream["constant_stream"]
    assert "a frame arrives every 25.0 ms" in page and "<th>over 50 ms</th>" in page
    assert re.search(rf'<td>onnxruntime</td><td class="num">40.0000</td><td class="num">{cs["over_deadline"]["count"]}'
                     rf'</td>.*?<td class="num">{cs["late_frames"]["count"]}</td>', page)
    assert "<th>session_create</th>" in page and "<th>first_frame_ms</th>" in page           # cold start by step
    system = json.loads((inputs["bench_dir"] / "system.json").read_text())
    assert f"system: {html.escape(system['cpu']['model'])} (" in page and "<td>cpu.governor</td>" in page
    assert "cpu_model" in page                                                    # the old result's device record
    # overview: every headline metric side by side
    assert page.count('<a href="#') >= 7 and "Metrics side by side" in page and "inference on labelled frames" in page
    assert "export metric gate, fp16" in page and "validation, best epoch" in page


def test_site_links_and_images_resolve_inside_the_site(site):
    refs = _refs(site)
    assert len(refs.src) >= 20
    for ref in refs.src + refs.href:
        assert ref and not re.match(r"^[a-z]+:", ref) and not ref.startswith("/"), ref   # relative, no scheme
        if ref.startswith("#"):
            assert ref[1:] in refs.ids, ref
        else:
            assert (site / ref).is_file(), ref
    page = (site / "index.html").read_text()
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")


def _chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if exe is None:
        pytest.skip("Chromium is not installed (Debian: apt-get install chromium; .ci/run installs it when it can)")
    return exe


_HARNESS = """<script>
window.__problems = [];
window.addEventListener('error', function (e) {
  var t = e.target;
  window.__problems.push(t && t !== window && (t.src || t.href) ? 'failed to load ' + (t.src || t.href)
                                                                 : 'error: ' + e.message);
}, true);
var origError = console.error;
console.error = function () { window.__problems.push('console.error: ' + [].join.call(arguments, ' '));
                              origError.apply(console, arguments); };
window.addEventListener('load', function () {
  var imgs = Array.prototype.slice.call(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                   .map(function (i) { return i.getAttribute('src'); });
  var pre = document.createElement('pre');
  pre.id = 'mtl-check';
  pre.textContent = JSON.stringify({images: imgs.length, broken: broken, problems: window.__problems,
                                    sections: document.querySelectorAll('section').length});
  document.body.appendChild(pre);
});
</script>"""


def render(site: Path, tmp_path: Path) -> tuple[dict, list[str]]:
    """Load the report in headless Chromium (from the file system) with a checking script injected first
    into a copy of index.html next to it: returns the check (images, broken, problems) and the console lines
    Chromium logged."""
    exe = _chromium()
    page = (site / "index.html").read_text()
    check = site / "_browser_check.html"
    check.write_text(page.replace("<head>", "<head>" + _HARNESS, 1))
    try:
        r = subprocess.run([exe, "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
                            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=20000",
                            "--dump-dom", check.as_uri()], capture_output=True, text=True, timeout=180)
    finally:
        check.unlink()
    m = re.search(r'<pre id="mtl-check">(.*?)</pre>', r.stdout, re.S)
    assert m, f"no check result (rc {r.returncode}): {r.stderr[-2000:]}"
    console = [ln for ln in r.stderr.splitlines() if "CONSOLE" in ln]
    return json.loads(html.unescape(m.group(1))), console


def test_report_renders_in_headless_chromium(site, tmp_path):
    result, console = render(site, tmp_path)
    assert result["images"] == len(_refs(site).src) >= 20
    assert result["broken"] == [] and result["problems"] == [] and console == []
    assert result["sections"] == 8                                          # overview + 7 inputs


def test_browser_check_catches_a_missing_image(site, tmp_path):
    """The check above can fail: a site with one image removed reports it."""
    broken = tmp_path / "broken"
    shutil.copytree(site, broken)
    victim = sorted((broken / "img").rglob("*.png"))[0]
    victim.unlink()
    result, _ = render(broken, tmp_path)
    assert [s for s in result["broken"]] == [str(victim.relative_to(broken))]
    assert any(p.startswith("failed to load") and victim.name in p for p in result["problems"])


def test_output_dir_refusals_and_replacement(inputs, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(OutputError, match="not empty .* and not an earlier mtl report"):
        build_report([inputs["run"]], out)
    r = CliRunner().invoke(main, ["report", str(inputs["run"]), "--out", str(out)])
    assert r.exit_code == 9 and r.output.count("\n") == 1 and "--overwrite" in r.output
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["notes.txt"]
    build_report([inputs["run"]], out, overwrite=True)                      # writes into it, deletes nothing
    assert (out / "notes.txt").read_text() == "mine" and (out / "index.html").is_file()
    # an earlier report is replaced without --overwrite; files the new one lacks go, foreign files stay
    build_report([inputs["infer"], inputs["bench_json"]], out)
    assert not (out / "img" / "run-1").exists() and (out / "img" / "infer-1" / "000_bev.png").is_file()
    assert (out / "notes.txt").read_text() == "mine"
    assert "Training run" not in (out / "index.html").read_text()
    assert not [p for p in tmp_path.iterdir() if "staging" in p.name]      # the staging folder is gone
    with pytest.raises(OutputError, match="is one of the report's inputs"):
        build_report([inputs["run"]], inputs["run"])


def _complete_site(out: Path) -> str:
    """The kind of the report in ``out`` after checking that every file its manifest lists is there with its
    size and index.html shows that input (a complete set, not a mix)."""
    manifest = json.loads((out / "mtl_report.json").read_text())
    for f in manifest["files"]:
        assert (out / f["name"]).stat().st_size == f["size"], f["name"]
    kind = manifest["inputs"][0]["kind"]
    assert ("Inference: " if kind == "infer" else "Benchmark: ") in (out / "index.html").read_text()
    return kind


def test_a_report_killed_at_any_write_leaves_the_old_or_the_new_site(inputs, tmp_path, monkeypatch):
    """SIGKILL at the k-th durable write (MTL_FAULT_AT_WRITE): in a staging file, right after the commit
    journal, in the middle of the commit and at its end. DIR always holds a complete report: the old one, or
    (once the journal is down, after the next run rolls it forward) the new one; never a mix."""
    import os
    import sys

    old, out = tmp_path / "old", tmp_path / "out"
    build_report([inputs["bench_json"]], old)
    args = [sys.executable, "-m", "mtl.cli", "report", str(inputs["infer"]), "--out", str(out)]
    log = tmp_path / "points.log"
    with monkeypatch.context() as m:                          # the write points of this report, in order
        m.setenv("MTL_FAULT_AT_WRITE", str(10 ** 9))
        m.setenv("MTL_FAULT_LOG", str(log))
        build_report([inputs["infer"]], tmp_path / "probe")
    labels = [ln.split("\t")[1] for ln in log.read_text().splitlines()]
    journal = labels.index("commit journal")                   # 1-based: the journal file itself is in place
    commits = [i + 1 for i, lb in enumerate(labels) if lb.startswith("commit ") and lb != "commit journal"]
    kinds = []
    for k in (1, journal, commits[len(commits) // 2], len(labels)):
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(old, out)
        r = subprocess.run(args, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "MTL_FAULT_AT_WRITE": str(k)})
        assert r.returncode == -9, (k, r.stderr[-2000:])
        kinds.append("journal" if (out / ".mtl-commit.json").exists() else _complete_site(out))
        if kinds[-1] == "journal":                             # the next run rolls the commit forward
            r = subprocess.run(args, capture_output=True, text=True, timeout=300)
            assert r.returncode == 0 and _complete_site(out) == "infer", r.stderr[-2000:]
    assert kinds == ["bench", "journal", "journal", "infer"], kinds


def test_report_overview_shows_the_gap(inputs, tmp_path):
    """Validation metrics and inference metrics on other frames side by side, with the pixel-accuracy gap."""
    out = tmp_path / "gap"
    build_report([inputs["run"], inputs["infer_eval"]], out)
    page = (out / "index.html").read_text()
    rows = json.loads((inputs["run"] / "metrics.jsonl").read_text().splitlines()[-1])
    accs = sorted([inputs["metrics"]["pixel_acc"], max(
        (json.loads(ln) for ln in (inputs["run"] / "metrics.jsonl").read_text().splitlines()),
        key=lambda r: r["val/miou"] + r["val/map"])["val/pixel_acc"]])
    assert rows["epoch"] == 2
    assert f"Pixel accuracy ranges from <b>{accs[0]:.3f}</b>" in page and f"to <b>{accs[1]:.3f}</b>" in page
    assert f"a gap of {accs[1] - accs[0]:.3f}" in page
    assert np.isfinite(accs).all()


def test_infer_eval_on_the_real_a2d2_sample_and_the_gap_in_the_report(a2d2_sample, tmp_path):
    """`mtl infer --eval` of one model on synthetic frames and on the real A2D2 sample, as a raw tree and as
    chunks converted with --partial: the real numbers agree between the two and with `mtl eval`, every frame is
    scored on the labels it has (3 camera + semantic label frames, 1 LiDAR + 3D boxes frame), and the report
    puts the synthetic and the real pixel accuracy side by side with the gap between them."""
    from test_runtime import export_tiny, save_tiny_checkpoint

    from mtl.config import Config
    from mtl.data.convert import convert
    from mtl.evaluate import evaluate_checkpoint

    cfg = Config().override(**{"model.cam_channels": (4, 8, 8, 8), "model.bev_channels": (8, 8, 8),
                               "model.cam_depth": 1, "model.bev_depth": 1, "model.bev_decoder_channels": 8,
                               "model.fuse_channels": 4, "model.head_channels": 8, "model.sem_decoder_channels": 8})
    ckpt = save_tiny_checkpoint(cfg, tmp_path / "ckpt.pt")
    onnx = export_tiny(ckpt, tmp_path / "export" / "model.onnx")
    runner = CliRunner()
    r = runner.invoke(main, ["data", "synth", "--out", str(tmp_path / "synth"), "--frames", "2", "--seed", "1",
                             "--workers", "1"])
    assert r.exit_code == 0, r.output
    chunks = tmp_path / "real_chunks"
    convert(a2d2_sample, chunks, cfg, partial=True, workers=1, progress=False, log=lambda m: None)

    def infer_eval(data, out):
        r = runner.invoke(main, ["infer", "--model", str(onnx), "--data", str(data), "--out", str(out), "--eval",
                                 "--backend", "onnxruntime", "--threads", "1", "--overlay"])
        assert r.exit_code == 0, r.output
        return r.output, json.loads((out / "summary.json").read_text())

    _, synth = infer_eval(tmp_path / "synth", tmp_path / "i_synth")
    printed, raw = infer_eval(a2d2_sample, tmp_path / "i_real")
    _, conv = infer_eval(chunks, tmp_path / "i_chunks")
    assert raw["modalities"] == conv["modalities"] == {"camera+lidar": 0, "camera-only": 3, "lidar-only": 1}
    assert raw["frames_skipped"] == {"no camera image and no LiDAR": 4}                   # label files alone
    m, mc = raw["metrics"], conv["metrics"]
    assert (m["frames"], m["semantic_frames"], m["detection_frames"]) == (4, 3, 1)
    assert m["n_gt"] == {"car": 1, "truck": 1, "pedestrian": 0, "cyclist": 2}
    ev, _ = evaluate_checkpoint(str(ckpt), str(chunks), batch_size=2, progress=False)
    for key in ("miou", "pixel_acc", "map"):
        assert m[key] == pytest.approx(mc[key], abs=1e-9) == pytest.approx(ev[key], abs=1e-9), key
    assert f"pixel accuracy {m['pixel_acc']:.4f} over 3 frames" in printed
    lidar_only = json.loads((tmp_path / "i_real" / "frames" / "20180810_142822__000015196.json").read_text())
    assert lidar_only["modality"] == "lidar-only" and lidar_only["points"] == 8196                # the whole sweep
    assert synth["metrics"]["semantic_frames"] == synth["metrics"]["detection_frames"] == 2

    build_report([tmp_path / "i_synth", tmp_path / "i_real"], tmp_path / "site")
    page = (tmp_path / "site" / "index.html").read_text()
    accs = sorted([synth["metrics"]["pixel_acc"], m["pixel_acc"]])
    assert f"Pixel accuracy ranges from <b>{accs[0]:.3f}</b>" in page and f"to <b>{accs[1]:.3f}</b>" in page
    assert f"a gap of {accs[1] - accs[0]:.3f}" in page
    assert f"inference on labelled frames of {a2d2_sample}" in page and "lidar-only" in page
    assert "no camera image: a LiDAR-only frame" not in page                  # drawn into the card's picture
