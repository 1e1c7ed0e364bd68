"""The README's "Python API" example, extracted verbatim and run as a script in a fresh directory that holds
`export/model.onnx` (a tiny real export) and `val/` (tiny chunks, or a tiny raw A2D2 tree): the paths the
example names. It must run without importing torch."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from conftest import REPO
from test_runtime import export_tiny, runtime_cfg, save_tiny_checkpoint, tiny_artifacts


def readme_python_blocks(section: str = "## Python API") -> list[str]:
    """The ```python blocks of one top-level README section, in order, exactly as written."""
    text = (REPO / "README.md").read_text()
    start = text.index(section + "\n")
    end = text.find("\n## ", start + len(section))
    body = text[start: end if end >= 0 else len(text)]
    return re.findall(r"^```python\n(.*?)^```$", body, flags=re.DOTALL | re.MULTILINE)


def run_example(workdir: Path) -> list[str]:
    """Run the README blocks as one script in ``workdir``; returns its stdout lines (torch check last)."""
    blocks = readme_python_blocks()
    assert blocks, "README has no ```python block under '## Python API'"
    (workdir / "readme_example.py").write_text("\n".join(blocks))
    code = ("import json, runpy, sys\n"
            "runpy.run_path('readme_example.py', run_name='__main__')\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-1]) == [], "the README example imported torch"
    return lines[:-1]


def check_output(lines: list[str], kind: str) -> None:
    assert lines[0].startswith("Pipeline(model='export/model.onnx', backend='onnxruntime', precision='fp32', "
                               "image=32x64, bev=(8, 64, 64), det_classes=4, sem_classes=18)")
    frames = [ln for ln in lines if ln.startswith("RuntimeFrame(")]
    results = [ln for ln in lines if ln.startswith("Result(")]
    assert len(frames) == 2 and len(results) == 2                     # limit=2
    assert all(f"kind='{kind}'" in ln and "points=(" in ln for ln in frames)
    assert all("semantic=(32, 64) uint8" in ln and "total=" in ln for ln in results)
    assert sum(ln.startswith("road: ") and ln.endswith("% of the pixels") for ln in lines) == 2
    timings = [ln for ln in lines if ln.startswith("{") and "'decode_png': " in ln]
    assert len(timings) == 2 and all("'inference': " in ln and "'total': " in ln for ln in timings)
    # raw frames are undistorted + resized + normalised in one remap pass
    assert all(("'remap_normalise': " in ln) == (kind == "raw") for ln in timings)
    info = lines.index("{'points': 2, 'points_dropped_nonfinite': 1}")
    assert lines[info + 1] == "['bev_raster', 'inference', 'postprocess', 'remap_normalise', 'total']"  # run_sensor
    streamed = lines[info + 2:]                      # run_stream over the same data: ids in order, a box count each
    ids = [re.search(r"id='([^']+)'", ln).group(1) for ln in frames]
    assert len(streamed) >= 2 and [ln.rsplit(" ", 1)[0] for ln in streamed[:2]] == ids
    assert all(re.fullmatch(r"\S+ \d+", ln) for ln in streamed)


def test_readme_example_on_chunks(tmp_path):
    art = tiny_artifacts(tmp_path)                    # tmp/export/model.onnx, tmp/chunks
    art["chunks"].rename(tmp_path / "val")
    lines = run_example(tmp_path)
    check_output(lines, "chunk")
    boxes = [ln for ln in lines if re.fullmatch(r"\S+ +0\.\d\d  x= *-?\d+\.\d m  "
                                                r"y= *-?\d+\.\d m  \d+\.\d x \d+\.\d m", ln)]
    assert boxes, "\n".join(lines)                     # the per-box loop printed class, score, position, size


def test_readme_example_on_a_raw_a2d2_tree(tmp_path):
    from test_convert import COMPLETE, write_raw_tree

    from mtl.data.a2d2 import read_camera_config

    raw = write_raw_tree(tmp_path / "val", COMPLETE[:2])
    base = runtime_cfg()
    cfg = replace(base, camera=read_camera_config(raw / "cams_lidars.json", base=base.camera))
    export_tiny(save_tiny_checkpoint(cfg, tmp_path / "ckpt.pt"), tmp_path / "export" / "model.onnx")
    check_output(run_example(tmp_path), "raw")


def test_readme_blocks_are_extracted_verbatim():
    blocks = readme_python_blocks()
    text = (REPO / "README.md").read_text()
    assert len(blocks) >= 1 and all(f"```python\n{b}```" in text for b in blocks)
    first = blocks[0].splitlines()
    assert 'model_path = "export/model.onnx"' in " ".join(first) and 'data_dir = "val"' in " ".join(first)
