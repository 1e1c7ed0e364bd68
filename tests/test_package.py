"""Package-level contracts: light imports, CLI help on every command, packaged data."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

TORCH_FREE = ["mtl", "mtl.config", "mtl.errors", "mtl.io", "mtl.data.chunk", "mtl.geometry", "mtl.cli"]


def _imports_torch(modules: list[str]) -> list[str]:
    code = (
        "import importlib, json, sys\n"
        f"mods = {modules!r}\n"
        "for m in mods: importlib.import_module(m)\n"
        "print(json.dumps(sorted(k for k in sys.modules if k == 'torch' or k.startswith('torch.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_core_modules_do_not_import_torch():
    assert _imports_torch(TORCH_FREE) == []


def test_runtime_imports_neither_torch_nor_the_exporter():
    """The vehicle runtime depends on the artefact contract (mtl.contract), never on mtl.export."""
    code = (
        "import json, sys\n"
        "import mtl.runtime\n"
        "print(json.dumps(sorted(k for k in sys.modules if k.split('.')[0] == 'torch' or k == 'mtl.export'\n"
        "                        or k.startswith('mtl.export.') or k == 'onnx' or k.startswith('onnx.'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_optional_torch_free_modules_do_not_import_torch():
    import importlib.util

    def exists(name: str) -> bool:
        try:
            return importlib.util.find_spec(name) is not None
        except ModuleNotFoundError:  # parent package missing
            return False

    present = [m for m in ("mtl.metrics", "mtl.data.a2d2", "mtl.data.synth", "mtl.data.convert", "mtl.data.inspect",
                           "mtl.viz", "mtl.contract") if exists(m)]
    if not present:
        pytest.skip("no optional torch-free modules installed")
    assert _imports_torch(present) == []


def _all_commands(group, prefix=()):
    import click

    for name, cmd in group.commands.items():
        yield prefix + (name,)
        if isinstance(cmd, click.Group):
            yield from _all_commands(cmd, prefix + (name,))


def test_every_command_has_help():
    from mtl.cli import main

    runner = CliRunner()
    paths = list(_all_commands(main))
    assert ("data",) in paths
    for path in paths:
        res = runner.invoke(main, [*path, "--help"])
        assert res.exit_code == 0, (path, res.output)
        assert "Usage:" in res.output


def test_packaged_class_table_matches_a2d2_palette(a2d2_sample):
    from mtl.config import ClassesConfig, a2d2_classes

    table = a2d2_classes()
    real = json.loads((a2d2_sample / "class_list.json").read_text())
    assert table["a2d2_colours"] == real
    mapping = ClassesConfig.a2d2_default().a2d2_name_to_sem_id()
    # every A2D2 class name maps to a training class or ignore
    assert set(mapping) == set(real.values())
    assert mapping["Car 3"] == ClassesConfig.a2d2_default().sem_classes.index("car")
    assert mapping["Ego car"] == 255


def test_packaged_calibration_matches_cams_lidars(a2d2_sample):
    from mtl.config import CameraConfig

    real = json.loads((a2d2_sample / "cams_lidars.json").read_text())["cameras"]["front_center"]
    cam = CameraConfig.a2d2_front_center()
    assert [list(r) for r in cam.cam_matrix] == real["CamMatrix"]
    assert [list(r) for r in cam.cam_matrix_original] == real["CamMatrixOriginal"]
    assert list(cam.distortion) == real["Distortion"][0]
    assert list(cam.resolution_wh) == real["Resolution"]


def test_config_round_trip_and_override(tmp_path):
    from mtl.config import Config

    cfg = Config().override(**{"loss.lambda_sem": 2.5, "train.epochs": 3})
    assert cfg.loss.lambda_sem == 2.5 and cfg.train.epochs == 3
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    p = tmp_path / "partial.json"
    p.write_text(json.dumps({"train": {"batch_size": 7}}))
    assert Config.load(p).train.batch_size == 7
    with pytest.raises(KeyError):
        Config().override(**{"loss.no_such_key": 1})
    p.write_text(json.dumps({"train": {"bogus": 1}}))
    with pytest.raises(ValueError, match="unknown config keys"):
        Config.load(p)


def test_config_reads_the_metric_score_cut_from_its_old_place():
    """Checkpoints, ONNX metadata and config files written before the move keep loading: the old
    ``train.eval_score_threshold`` becomes ``decode.eval_score_threshold``; the new key wins over the old."""
    from mtl.config import Config

    new = Config().to_dict()
    assert new["decode"]["eval_score_threshold"] == 0.05 and "eval_score_threshold" not in new["train"]
    old = json.loads(json.dumps(new))
    del old["decode"]["eval_score_threshold"]
    old["train"]["eval_score_threshold"] = 0.07
    before = json.dumps(old)
    cfg = Config.from_dict(old)
    assert cfg.decode.eval_score_threshold == 0.07 and json.dumps(old) == before          # input untouched
    assert Config.from_dict(cfg.to_dict()) == cfg
    assert Config.from_dict({"train": {"eval_score_threshold": 0.2}}).decode.eval_score_threshold == 0.2
    both = {"train": {"eval_score_threshold": 0.2}, "decode": {"eval_score_threshold": 0.01}}
    assert Config.from_dict(both).decode.eval_score_threshold == 0.01
    with pytest.raises(KeyError):
        Config().override(**{"train.eval_score_threshold": 0.1})
