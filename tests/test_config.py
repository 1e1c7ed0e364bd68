"""mtl.config: type and range checks (one ConfigError naming the dotted key) through every way a config is
built -- from_dict, load, override, `--set`, a flag, checkpoints and ONNX metadata --, legacy keys, `--set`
parsing and the real defaults in `mtl train --help`."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from mtl.cli import main
from mtl.config import Config, build_config, parse_assignment
from mtl.errors import ConfigError

# (partial config dict, exact one-line reason)
TYPE_ERRORS = [
    ({"train": {"lr": "0.1"}}, "train.lr: expected a number, got str '0.1'"),
    ({"train": {"epochs": 2.5}}, "train.epochs: expected an integer, got float 2.5"),
    ({"train": {"batch_size": True}}, "train.batch_size: expected an integer, got bool True"),
    ({"train": {"amp": 1}}, "train.amp: expected true or false, got int 1"),
    ({"loss": {"sem_loss": None}}, "loss.sem_loss: expected a string, got null"),
    ({"camera": {"image_hw": [320]}}, "camera.image_hw: expected a list of 2 values, got 1: [320]"),
    ({"camera": {"image_hw": [320, "512"]}}, "camera.image_hw[1]: expected an integer, got str '512'"),
    ({"model": {"cam_channels": 16}}, "model.cam_channels: expected a list, got int 16"),
    ({"classes": {"sem_groups": [["road", "Road"]]}}, "classes.sem_groups[0][1]: expected a list, got str 'Road'"),
    ({"grid": {"cell": float("nan")}}, "grid.cell: expected a finite number, got nan"),
    ({"loss": {"sem_weights": [1.0, float("inf")]}}, "loss.sem_weights[1]: expected a finite number, got inf"),
    ({"train": [1, 2]}, "train: expected an object, got list [1, 2]"),
]

RANGE_ERRORS = [
    ({"train": {"lr": 0}}, "train.lr: must be > 0, got 0.0"),
    ({"train": {"epochs": 0}}, "train.epochs: must be >= 1 and <= 1000000, got 0"),
    ({"train": {"batch_size": 0}}, "train.batch_size: must be >= 1 and <= 4096, got 0"),
    ({"train": {"seed": -1}}, "train.seed: must be >= 0 and <= 4294967295, got -1"),
    ({"grid": {"cell": -0.2}}, "grid.cell: must be > 0, got -0.2"),
    ({"grid": {"x_min": 10, "x_max": 5}}, "grid.x_max: must be > x_min (10.0), got 5.0"),
    ({"grid": {"x_max": 51.3}}, "grid.x_max: x_min..x_max must span a whole number of 0.2 m cells (256.5), got 51.3"),
    ({"camera": {"image_hw": [320, 500]}},
     "camera.image_hw: must be divisible by 16 (2 ** len(model.cam_channels)), got [320, 500]"),
    ({"camera": {"image_hw": [0, 512]}}, "camera.image_hw: must be >= 1 and <= 8192 (each), got [0, 512]"),
    ({"decode": {"score_threshold": 1.0}}, "decode.score_threshold: must be > 0 and < 1, got 1.0"),
    ({"decode": {"score_threshold": 0}}, "decode.score_threshold: must be > 0 and < 1, got 0.0"),
    ({"decode": {"nms_kernel": 4}}, "decode.nms_kernel: must be odd (a centred max-pool window), got 4"),
    ({"loss": {"lambda_sem": -1}}, "loss.lambda_sem: must be >= 0, got -1.0"),
    ({"loss": {"sem_loss": "bce"}}, "loss.sem_loss: must be one of ce, focal, got 'bce'"),
    ({"loss": {"sem_class_weights": "inverse"}},
     "loss.sem_class_weights: must be one of none, enet, median_freq, got 'inverse'"),
    ({"loss": {"sem_weights": [1.0, 2.0]}},
     "loss.sem_weights: must hold one weight per semantic class (18) or none, got [1.0, 2.0]"),
    ({"model": {"heatmap_prior": 1.0}}, "model.heatmap_prior: must be > 0 and < 1, got 1.0"),
    ({"model": {"cam_channels": [16, 32]}}, "model.cam_channels: must list 3 to 8 stage widths, got [16, 32]"),
    ({"classes": {"ignore_index": 3}}, "classes.ignore_index: must not be a semantic class id (there are 18 "
                                       "classes), got 3"),
    ({"classes": {"det_classes": ["car", "car"]}}, 'classes.det_classes: must not repeat a name, got ["car", "car"]'),
    ({"grid": {"head_stride": 4}}, "grid.head_stride: must be 2: the BEV encoder's first (stride-2) stage is the "
                                   "head resolution, got 4"),
    ({"version": 2}, "version: config version 2 is not supported (this mtl reads version 1)"),
]

# a crafted config must not be able to ask for terabytes
SIZE_ERRORS = [
    ({"model": {"cam_channels": [16, 32, 48, 100000]}}, "model.cam_channels: must be >= 1 and <= 4096 (each)"),
    ({"model": {"head_channels": 1 << 40}}, "model.head_channels: must be >= 1 and <= 4096"),
    ({"grid": {"x_min": -1e6, "x_max": 1e6}}, "grid.x_max: x_min..x_max spans 10000000 cells, more than 4096"),
    ({"camera": {"image_hw": [65536, 65536]}}, "camera.image_hw: must be >= 1 and <= 8192 (each)"),
    ({"train": {"batch_size": 10**9}}, "train.batch_size: must be >= 1 and <= 4096"),
]


def _id(x) -> str:
    return json.dumps(x) if isinstance(x, dict) else ""


@pytest.mark.parametrize("d, reason", TYPE_ERRORS + RANGE_ERRORS, ids=_id)
def test_from_dict_rejects_wrong_types_and_ranges_naming_the_key(d, reason):
    with pytest.raises(ConfigError) as e:
        Config.from_dict(d)
    assert str(e.value) == reason and e.value.exit_code == 2 and "\n" not in str(e.value)


@pytest.mark.parametrize("d, reason", SIZE_ERRORS, ids=_id)
def test_sizes_are_bounded(d, reason):
    with pytest.raises(ConfigError, match="^" + re.escape(reason)):
        Config.from_dict(d)


def test_load_names_the_file_and_the_key(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"train": {"lr": "0.1"}}))
    with pytest.raises(ConfigError) as e:
        Config.load(p)
    assert str(e.value) == f"{p}: train.lr: expected a number, got str '0.1'"
    p.write_text('{"train": {"lr": NaN}}')       # Python's json parses NaN: it must still be refused
    with pytest.raises(ConfigError, match="train.lr: expected a finite number, got nan"):
        Config.load(p)
    p.write_text("{not json")
    with pytest.raises(ConfigError, match=f"^{p}: config is not valid JSON"):
        Config.load(p)
    with pytest.raises(ConfigError, match="cannot read config"):
        Config.load(tmp_path / "missing.json")


def test_override_checks_like_from_dict_and_is_order_independent():
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a number, got str '0\.1'$"):
        Config().override(**{"train.lr": "0.1"})
    with pytest.raises(ConfigError, match=r"^train\.epochs: must be >= 1"):
        Config().override(**{"train.epochs": -3})
    with pytest.raises(ConfigError, match=r"^train: unknown config key$"):
        Config().override(**{"train": 3})
    with pytest.raises(ConfigError, match=r"^nosection\.lr: unknown config key$"):
        Config().override(**{"nosection.lr": 3})
    # image size and the number of camera stages change together: valid only as a pair, in either order
    pair = {"camera.image_hw": [40, 80], "model.cam_channels": [8, 8, 8]}
    a = Config().override(**pair)
    b = Config().override(**dict(reversed(pair.items())))
    assert a == b and a.camera.image_hw == (40, 80) and a.model.cam_channels == (8, 8, 8)
    with pytest.raises(ConfigError, match="camera.image_hw: must be divisible by 16"):
        Config().override(**{"camera.image_hw": [40, 80]})


def test_values_are_normalised():
    cfg = Config.from_dict({"train": {"lr": 1}, "loss": {"lambda_sem": np.float32(0.5)},
                            "model": {"cam_channels": [8, np.int64(16), 16, 16]}})
    assert type(cfg.train.lr) is float and cfg.train.lr == 1.0
    assert type(cfg.loss.lambda_sem) is float
    assert cfg.model.cam_channels == (8, 16, 16, 16) and all(type(c) is int for c in cfg.model.cam_channels)
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    # a partial section keeps the default tree's other values (here: the packaged calibration)
    part = Config.from_dict({"camera": {"image_hw": [160, 256]}})
    assert part.camera.cam_matrix == Config().camera.cam_matrix and part.camera.image_hw == (160, 256)


def test_legacy_model_max_detections_is_dropped_on_load():
    d = Config().to_dict()
    assert "max_detections" not in d["model"]
    d["model"]["max_detections"] = 100            # configs, checkpoints and ONNX metadata of mtl <= 0.1.0
    assert Config.from_dict(d) == Config()
    assert not hasattr(Config().model, "max_detections")
    with pytest.raises(ConfigError, match="model.max_detections: unknown config key"):
        Config().override(**{"model.max_detections": 5})   # tolerated when reading, never settable
    d["model"]["max_detection"] = 1
    with pytest.raises(ConfigError, match="model.max_detection: unknown config key"):
        Config.from_dict(d)


@pytest.mark.parametrize("text, key, value", [
    ("train.lr=0.001", "train.lr", 0.001),
    ("train.epochs=3", "train.epochs", 3),
    ("train.amp=false", "train.amp", False),
    ("loss.sem_loss=focal", "loss.sem_loss", "focal"),            # not JSON: the string itself
    ('loss.sem_loss="focal"', "loss.sem_loss", "focal"),
    ("camera.image_hw=[64, 128]", "camera.image_hw", [64, 128]),
    ("camera.name=a=b", "camera.name", "a=b"),                    # split at the first '='
    ('train.lr="0.1"', "train.lr", "0.1"),                        # a JSON string stays a string (and is refused)
])
def test_parse_assignment(text, key, value):
    assert parse_assignment(text) == (key, value)


@pytest.mark.parametrize("text", ["train.lr", "lr=0.1", "=3"])
def test_parse_assignment_refuses_malformed(text):
    with pytest.raises(ConfigError, match="expected SECTION.KEY=VALUE"):
        parse_assignment(text)


def test_build_config_precedence(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"train": {"lr": 0.5, "epochs": 7, "seed": 3}}))
    cfg = build_config(p, ["train.lr=0.25", "train.epochs=8", "camera.image_hw=[64,128]"],
                       {"train.epochs": 9, "train.seed": None})
    assert (cfg.train.lr, cfg.train.epochs, cfg.train.seed, cfg.camera.image_hw) == (0.25, 9, 3, (64, 128))
    with pytest.raises(ConfigError, match=r"^train\.lr: expected a number, got str '0\.1'$"):
        build_config(None, ['train.lr="0.1"'])


# ----------------------------------------------------------------------------------------------- CLI


def _train(args: list[str], tmp_path: Path):
    return CliRunner().invoke(main, ["train", "--data", str(tmp_path / "none"), "--out", str(tmp_path / "run"),
                                     "--no-progress", *args])


@pytest.mark.parametrize("args, reason", [
    (["--set", "train.lr=abc"], "error: train.lr: expected a number, got str 'abc'"),
    (["--set", "train.epochs=0"], "error: train.epochs: must be >= 1 and <= 1000000, got 0"),
    (["--set", "model.max_detections=5"], "error: model.max_detections: unknown config key"),
    (["--set", "train.lr"], "error: --set 'train.lr': expected SECTION.KEY=VALUE (e.g. train.lr=0.001)"),
    (["--lr", "-1"], "error: train.lr: must be > 0, got -1.0"),
    (["--epochs", "0"], "error: train.epochs: must be >= 1 and <= 1000000, got 0"),
    (["--lambda-sem", "nan"], "error: loss.lambda_sem: expected a finite number, got nan"),
    (["--ckpt-every-steps", "-1"], "error: train.ckpt_every_steps: must be >= 0, got -1"),
])
def test_train_cli_refuses_bad_values_with_one_line(args, reason, tmp_path):
    r = _train(args, tmp_path)
    assert r.exit_code == 2 and r.stderr.strip() == reason, r.output
    assert not (tmp_path / "run").exists()


def test_train_cli_config_file_error_names_the_file(tmp_path):
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({"train": {"lr": "0.1"}}))
    r = _train(["--config", str(p)], tmp_path)
    assert r.exit_code == 2 and r.stderr.strip() == f"error: {p}: train.lr: expected a number, got str '0.1'"


def test_train_cli_set_reaches_training(tiny_chunks, tmp_path):
    """--set values end up in the training config: a batch larger than the data is refused by train()."""
    pytest.importorskip("torch")
    cfg, data = tiny_chunks
    (tmp_path / "cfg.json").write_text(cfg.to_json())
    r = CliRunner().invoke(main, ["train", "--data", str(data), "--out", str(tmp_path / "run"), "--config",
                                  str(tmp_path / "cfg.json"), "--set", "train.batch_size=64", "--set",
                                  "loss.sem_class_weights=none", "--no-progress"])
    assert r.exit_code == 2 and r.stderr.strip() == f"error: {data}: 4 frames are fewer than one batch of 64 x 1"


def test_train_help_shows_the_real_defaults():
    import click

    from mtl.cli.train import train_cmd

    d = Config()
    assert (d.train.epochs, d.train.lr, d.loss.sem_class_weights) == (10, 0.002, "median_freq")
    ctx = click.Context(train_cmd)
    helps = {p.opts[0]: p.get_help_record(ctx)[1] for p in train_cmd.params if isinstance(p, click.Option)}
    expect = {"--epochs": "10", "--batch-size": "4", "--lr": "0.002", "--lambda-sem": "2.0",
              "--sem-loss": "ce", "--class-weights": "median_freq", "--workers": "0", "--viz-every": "1",
              "--deterministic": "false", "--ckpt-every-steps": "0", "--skip-bad": "false", "--seed": "0"}
    for flag, value in expect.items():
        assert helps[flag].endswith(f"[default: {value}]"), helps[flag]
    r = CliRunner().invoke(main, ["train", "--help"])
    assert r.exit_code == 0 and "[default: 10]" in r.output and "--set SECTION.KEY=VALUE" in r.output
    assert "[default: train." not in r.output and "[default: loss." not in r.output


def test_convert_cli_takes_set(tmp_path):
    from test_convert import COMPLETE, write_raw_tree

    from mtl.data.chunk import read_chunk

    root = write_raw_tree(tmp_path / "raw", COMPLETE)
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["data", "convert", "--a2d2", str(root), "--out", str(out), "--workers", "1",
                                  "--set", "camera.image_hw=[16,32]", "--no-progress"])
    assert r.exit_code == 0, r.output
    chunk = read_chunk(sorted(out.glob("chunk_*.npz"))[0])
    assert chunk.meta["camera"]["image_hw"] == [16, 32] and chunk.frame(0).image().shape == (16, 32, 3)
    r = CliRunner().invoke(main, ["data", "convert", "--a2d2", str(root), "--out", str(tmp_path / "o2"),
                                  "--set", "camera.image_hw=[16]", "--no-progress"])
    assert r.exit_code == 2 and r.stderr.strip() == "error: camera.image_hw: expected a list of 2 values, got 1: [16]"


# ----------------------------------------------------------------------------- checkpoints and ONNX


def test_checkpoint_config_is_checked_and_legacy_keys_load(tmp_path):
    torch = pytest.importorskip("torch")
    from conftest import tiny_cfg

    from mtl.model import build_model, load_checkpoint

    cfg = tiny_cfg()
    d = cfg.to_dict()
    d["model"]["max_detections"] = 100                    # written by mtl <= 0.1.0
    p = tmp_path / "old.pt"
    torch.save({"model": build_model(cfg).state_dict(), "config": d}, p)
    _, loaded, _ = load_checkpoint(p)
    assert loaded == cfg
    d["train"]["lr"] = "0.1"
    torch.save({"model": build_model(cfg).state_dict(), "config": d}, p)
    with pytest.raises(ConfigError) as e:
        load_checkpoint(p)
    assert str(e.value) == f"{p}: checkpoint config is invalid (train.lr: expected a number, got str '0.1')"


def test_onnx_metadata_config_checked_and_legacy_keys_load(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from conftest import write_tiny_chunks
    from test_runtime import export_tiny, runtime_cfg, save_tiny_checkpoint

    from mtl.errors import ModelMismatchError
    from mtl.runtime import Pipeline, iter_frames

    cfg = runtime_cfg()
    ckpt = save_tiny_checkpoint(cfg, tmp_path / "ckpt.pt")
    data = write_tiny_chunks(tmp_path / "chunks", cfg, n_frames=1, per_chunk=1)

    def legacy(meta):
        meta["config"]["model"]["max_detections"] = 100

    with Pipeline.open(export_tiny(ckpt, tmp_path / "legacy.onnx", meta_edit=legacy), "onnxruntime") as pipe:
        assert pipe.cfg == cfg
        res = pipe.run_frame(next(iter_frames(data)))
        assert res.semantic.shape == cfg.camera.image_hw

    def bad(meta):
        meta["config"]["train"]["lr"] = "0.1"

    path = export_tiny(ckpt, tmp_path / "bad.onnx", meta_edit=bad)
    with pytest.raises(ModelMismatchError) as e:
        Pipeline.open(path, "onnxruntime")
    assert str(e.value) == f"{path}: mtl metadata config is invalid (train.lr: expected a number, got str '0.1')"
