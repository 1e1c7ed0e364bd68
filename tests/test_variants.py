"""The variant table (``mtl.export.variants.VARIANTS``) drives the ``mtl export`` flags, ``ExportOptions``
validation and the ``mtl bench`` columns, files and skip reasons; ``ExportOptions`` checks its options in
one place. Torch-free: nothing here exports a model (tests/test_export.py does, row by row)."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from click.testing import CliRunner

from mtl.cli import main
from mtl.errors import ConfigError
from mtl.export.options import MIN_OPSET, ExportOptions
from mtl.export.variants import (
    BENCH_BACKENDS,
    CHECKS,
    DEFAULT_COMPARE,
    FP32,
    OPTIONAL,
    TARGETS,
    VARIANTS,
    bench_variant,
    variant,
)


def test_table_rows_are_consistent():
    assert [v.name for v in VARIANTS] == ["fp32", "fp16", "int8", "int8_cpu"]
    assert VARIANTS[0] is FP32 and FP32.build is None and FP32.flag is None and FP32.check == "parity"
    for key in ("name", "file", "bench", "tag"):
        values = [getattr(v, key) for v in VARIANTS]
        assert len(set(values)) == len(values), key
    assert len({v.flag for v in OPTIONAL}) == len(OPTIONAL)
    for v in OPTIONAL:
        assert callable(v.build) and v.flag.startswith("--") and v.file in v.help, v.name
        assert v.file.endswith(".onnx") and v.target in TARGETS and v.check in CHECKS
        assert variant(v.name) is v and bench_variant(v.bench) is v
    assert {dict(v.extra_metadata).get("int8_target") for v in VARIANTS if v.precision == "int8"} == set(TARGETS)
    assert [v.timing_key for v in OPTIONAL] == ["fp16_convert", "int8_quantize", "int8_cpu_quantize"]
    assert variant("int8_cpu").metadata({"precision": "fp32", "opset": 18}) == {
        "precision": "int8", "opset": 18, "int8_target": "cpu"}
    with pytest.raises(KeyError):
        variant("bf16")
    assert bench_variant("tensorrt") is None and bench_variant("torch") is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        FP32.file = "other.onnx"


def test_every_export_variant_flag_comes_from_the_table():
    export_cmd = main.commands["export"]
    params = {p.name: p for p in export_cmd.params}
    for v in OPTIONAL:
        p = params[v.name]
        assert p.opts == [v.flag] and p.is_flag and p.help == v.help
    # every other flag is an ExportOptions field: the CLI builds the options from its flags and nothing else
    fields = {f.name for f in dataclasses.fields(ExportOptions)}
    assert set(params) - {v.name for v in OPTIONAL} == fields - {"variants", "exclude_heads_int8"}
    text = CliRunner().invoke(main, ["export", "--help"], terminal_width=400).output
    assert [text.index(v.flag + " ") for v in OPTIONAL] == sorted(text.index(v.flag + " ") for v in OPTIONAL)
    assert all(v.file in text for v in VARIANTS)


@pytest.mark.parametrize("v", OPTIONAL, ids=lambda v: v.name)
def test_each_flag_selects_its_row(v, tmp_path):
    """The flag reaches ExportOptions as the row's name: a calibrated row without --calib-data, or a
    metric-gated row without --val-data, is refused before any work (exit 2, nothing written)."""
    out = tmp_path / "o"
    args = ["export", str(tmp_path / "missing.pt"), "--out", str(out), v.flag]
    res = CliRunner().invoke(main, args + (["--val-data", str(tmp_path)] if v.calibrated else
                                           ["--calib-data", str(tmp_path)]))
    assert res.exit_code == 2, res.output
    want = (f"error: {v.flag} needs --calib-data DIR" if v.calibrated else
            "error: --fp16/--int8/--int8-cpu are gated on mIoU/mAP over --val-data DIR")
    assert res.output.startswith(want), res.output
    assert not out.exists()


def _opts(**kw) -> ExportOptions:
    return ExportOptions(**{"checkpoint": "ck.pt", "out_dir": "out", "val_data": "val", **kw})


@pytest.mark.parametrize("kw, message", [
    ({"variants": ("fp32",)}, "unknown export variants ['fp32'] (choose from fp16, int8, int8_cpu; fp32 is always"),
    ({"variants": ("bf16", "fp16")}, "unknown export variants ['bf16']"),
    ({"trt_profile": "1:4"}, "--trt-profile must be MIN:OPT:MAX batch sizes, got '1:4'"),
    ({"trt_profile": "4:2:8"}, "--trt-profile needs 1 <= min <= opt <= max, got '4:2:8'"),
    ({"opset": MIN_OPSET - 1}, f"--opset {MIN_OPSET - 1}: the dynamo exporter needs opset >= {MIN_OPSET}"),
    ({"batch": 0}, "--batch must be >= 1, got 0"),
    ({"variants": ("fp16", "int8_cpu", "int8")}, "--int8 needs --calib-data DIR (chunks for the calibration frames)"),
    ({"variants": ("int8_cpu",)}, "--int8-cpu needs --calib-data DIR"),
    ({"val_data": None}, ("the parity report needs real frames: pass --val-data DIR (or --calib-data DIR), or "
                          "--no-parity")),
    ({"val_data": None, "calib_data": "calib", "variants": ("fp16",)},
     "--fp16/--int8/--int8-cpu are gated on mIoU/mAP over --val-data DIR: pass it (or --no-parity)"),
    ({"calib_method": "kl"}, "--calib-method 'kl': choose from minmax, percentile, entropy, mse"),
    ({"calib_percentile": 0.0}, "--calib-percentile must be in (0, 100], got 0"),
    ({"sensitivity_top": -1}, "--sensitivity-frames must be >= 1 and --sensitivity-top >= 0, got 4 / -1"),
    ({"sensitivity": True, "variants": ("fp16",)}, "--sensitivity ranks the layers of an INT8 variant: add "
                                                    "--int8/--int8-cpu"),
    ({"sensitivity": True, "variants": ("int8",), "calib_data": "c", "parity": False},
     "--sensitivity measures on --val-data frames: it cannot run with --no-parity"),
])
def test_export_options_validation_errors(kw, message):
    with pytest.raises(ConfigError) as e:
        _opts(**kw).validate()
    assert str(e.value).startswith(message) and e.value.exit_code == 2


def test_export_options_valid_combinations_and_derived_values():
    _opts().validate()
    _opts(val_data=None, parity=False, variants=("fp16",)).validate()          # ungated on purpose
    _opts(val_data=None, calib_data="calib").validate()                         # parity frames from calib
    o = _opts(variants=("int8_cpu", "fp16"), calib_data="calib", trt_profile="1:2:4", timing_cache="t.cache")
    o.validate()
    assert [v.name for v in o.selected] == ["fp16", "int8_cpu"]                 # table order, not argument order
    assert o.checkpoint == Path("ck.pt") and o.out_dir == Path("out") and o.timing_cache == Path("t.cache")
    assert o.calib_data == "calib" and o.parity_data == "val"                   # data dirs are printed as given
    assert o.profile == (1, 2, 4) and o.dynamic and o.run_batch == 2 and o.batch_label == "dynamic"
    assert _opts(batch=3).run_batch == 3 and _opts(batch=3).batch_label == 3
    rep = o.to_report()
    assert list(rep)[:5] == ["opset", "fp16", "int8", "int8_cpu", "decode"]
    assert (rep["fp16"], rep["int8"], rep["int8_cpu"]) == (True, False, True)
    assert rep["trt_profile"] == [1, 2, 4] and rep["batch"] == "dynamic" and rep["calib_data"] == "calib"
    assert (rep["calib_method"], rep["max_drop_miou"], rep["max_drop_map"], rep["mixed_precision"]) == (
        "minmax", 0.005, 0.005, True)
    _opts(variants=("int8",), calib_data="c", sensitivity=True, calib_method="mse").validate()
    with pytest.raises(dataclasses.FrozenInstanceError):
        o.opset = 19


def test_bench_columns_files_and_skip_reasons_come_from_the_table(tmp_path):
    from mtl.bench import _model_paths, _Skip, open_bench_pipeline

    assert DEFAULT_COMPARE == ("torch", "torch-compile", *(v.bench for v in VARIANTS), "openvino", "tensorrt")
    assert set(DEFAULT_COMPARE) < set(BENCH_BACKENDS)
    assert [c for c in BENCH_BACKENDS if bench_variant(c)] == [v.bench for v in VARIANTS]
    model = tmp_path / "exported.onnx"
    paths = _model_paths(model)
    assert paths[FP32.bench] == model                                          # fp32 is --model itself
    for v in OPTIONAL:
        assert paths[v.bench] == tmp_path / v.file
        with pytest.raises(_Skip, match=f"^no {v.file} next to exported.onnx \\(mtl export {v.flag}\\)$"):
            open_bench_pipeline(v.bench, model, None, 1)
    help_text = CliRunner().invoke(main, ["bench", "--help"], terminal_width=400).output
    assert ",".join(DEFAULT_COMPARE) in help_text and ", ".join(BENCH_BACKENDS) in help_text


def test_bench_file_tags_come_from_the_table(tmp_path):
    from mtl.bench import write_report

    compare = [v.bench for v in VARIANTS] + ["torch"]
    report = {"compare": compare, "markdown": "| table |\n", "rows": [{"backend": c, "status": "ok"} for c in compare]}
    written = write_report(report, tmp_path)
    assert Path(written["json"]).name.endswith("_" + "+".join([v.tag for v in VARIANTS] + ["torch"]) + ".json")
    assert Path(written["markdown"]).read_text().endswith("| table |\n")
