"""Training loop + `mtl train` / `mtl eval`: run artefacts, learning, exact resume, divergence, DDP."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("mtl.losses", reason="mtl/losses.py not written yet")
pytest.importorskip("mtl.metrics", reason="mtl/metrics.py not written yet")

from click.testing import CliRunner
from conftest import tiny_cfg, write_tiny_chunks

from mtl.cli import main


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    cfg = tiny_cfg()
    (root / "config.json").write_text(cfg.to_json())
    write_tiny_chunks(root / "train", cfg, n_frames=4, per_chunk=2, seed=0)
    write_tiny_chunks(root / "val", cfg, n_frames=2, per_chunk=2, seed=1)
    write_tiny_chunks(root / "val_odd", cfg, n_frames=5, per_chunk=2, seed=2)
    return root


def _train(data, out, *extra):
    args = ["train", "--data", str(data / "train"), "--out", str(out), "--config", str(data / "config.json"),
            "--no-progress", *extra]
    return CliRunner().invoke(main, args, catch_exceptions=False)


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def test_two_epoch_run_writes_artefacts(data, tmp_path):
    run = tmp_path / "run"
    r = _train(data, run, "--val", str(data / "val"), "--epochs", "2", "--viz-every", "1",
               "--class-weights", "median_freq", "--lambda-sem", "2")
    assert r.exit_code == 0, r.output
    for name in ("config.json", "last.pt", "best.pt", "metrics.jsonl"):
        assert (run / name).is_file(), name
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["loss"]["lambda_sem"] == 2.0 and cfg["loss"]["sem_class_weights"] == "median_freq"
    assert len(cfg["loss"]["sem_weights"]) == len(cfg["classes"]["sem_classes"])
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    keys = set(rows[-1])
    for k in ("step", "lr", "train/hm", "train/reg", "train/sem", "train/total", "epoch_time", "samples_per_s",
              "val/loss/hm", "val/loss/reg", "val/loss/sem", "val/loss/total", "val/miou", "val/pixel_acc",
              "val/map", "val/iou/road", "val/ap/car", "score"):
        assert k in keys, k
    assert all(f"val/ap/{c}" in keys for c in cfg["classes"]["det_classes"])
    ckpt = torch.load(run / "last.pt", map_location="cpu", weights_only=True)
    assert set(ckpt) >= {"model", "optimizer", "scheduler", "epoch", "step", "rng", "config", "metrics"}
    assert ckpt["epoch"] == 2 and ckpt["step"] == 4 and ckpt["config"] == cfg
    assert (run / "debug" / "epoch_001").is_dir() and (run / "curves.png").is_file()
    assert "mIoU" in r.output

    # mtl eval on the checkpoint: table + JSON
    out_json = tmp_path / "m.json"
    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(run / "best.pt"), "--data", str(data / "val"),
                                  "--out", str(out_json), "--no-progress"], catch_exceptions=False)
    assert r.exit_code == 0, r.output
    for word in ("road", "car", "cyclist", "mIoU", "mAP", "pixel acc"):
        assert word in r.output
    m = json.loads(out_json.read_text())
    assert m["frames"] == 2 and 0 <= m["miou"] <= 1 and 0 <= m["map"] <= 1 and "per_class_iou" in m

    r = CliRunner().invoke(main, ["eval", "--checkpoint", str(tmp_path / "nope.pt"), "--data", str(data / "val")])
    assert r.exit_code == 5 and "checkpoint not found" in r.output


def test_loss_decreases_on_tiny_overfit_set(data, tmp_path):
    cfg = tiny_cfg(**{"train.augment": False, "train.lr": 1e-2, "train.warmup_steps": 1})
    (tmp_path / "c.json").write_text(cfg.to_json())
    run = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", "--data", str(data / "train"), "--out", str(run), "--config",
                                  str(tmp_path / "c.json"), "--epochs", "12", "--no-progress"],
                           catch_exceptions=False)
    assert r.exit_code == 0, r.output
    rows = _rows(run)
    first, last = rows[0], rows[-1]
    assert last["train/total"] < 0.6 * first["train/total"]
    assert last["train/hm"] < first["train/hm"] and last["train/sem"] < first["train/sem"]
    assert (run / "best.pt").is_file()  # without --val best.pt follows the training loss


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_exact_resume(data, tmp_path):
    full, part = tmp_path / "full", tmp_path / "part"
    assert _train(data, full, "--epochs", "3", "--deterministic", "--seed", "3").exit_code == 0
    assert _train(data, part, "--epochs", "1", "--deterministic", "--seed", "3").exit_code == 0
    r = _train(data, part, "--epochs", "3", "--deterministic", "--seed", "3", "--resume")
    assert r.exit_code == 0, r.output
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(part / "last.pt", weights_only=True)
    assert a["epoch"] == b["epoch"] == 3 and a["step"] == b["step"]
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert [r["epoch"] for r in _rows(part)] == [1, 2, 3]
    assert _rows(part)[-1]["train/total"] == _rows(full)[-1]["train/total"]


def _old_checkpoint(ck: dict) -> dict:
    """``ck`` as mtl wrote it before ``EpochProgress``: ``batch_in_epoch`` + ``partial_epoch`` instead of
    ``progress``, and the metric score cut under ``train`` in the config."""
    p = ck["progress"]
    old = {k: v for k, v in ck.items() if k != "progress"}
    old.update(batch_in_epoch=p["batch_in_epoch"],
               partial_epoch={"sums": p["loss_sums"], "n_seen": p["n_seen"], "bad": p["n_bad"], "time": p["time_s"]})
    cfg = json.loads(json.dumps(ck["config"]))
    cfg["train"]["eval_score_threshold"] = cfg["decode"].pop("eval_score_threshold")
    old["config"] = cfg
    return old


def test_mid_epoch_checkpoint_resumes_exactly_also_from_the_old_keys(data, tmp_path, monkeypatch):
    import mtl.train

    mid: dict[int, dict] = {}
    real = mtl.train.save_checkpoint

    def keep(path, obj):                # every mid-epoch last.pt of the uninterrupted run, as written
        real(path, obj)
        if "progress" in obj:
            mid[obj["step"]] = torch.load(path, map_location="cpu", weights_only=True)

    monkeypatch.setattr(mtl.train, "save_checkpoint", keep)
    args = ("--epochs", "2", "--batch-size", "1", "--deterministic", "--seed", "4", "--ckpt-every-steps", "1")
    full = tmp_path / "full"
    assert _train(data, full, *args).exit_code == 0
    assert sorted(mid) == [1, 2, 3, 5, 6, 7]            # 4 steps per epoch; epoch ends are not mid-epoch
    ck = mid[6]
    p = ck["progress"]
    assert ck["epoch"] == 1 and (p["epoch"], p["batch_in_epoch"], p["n_seen"], p["n_bad"]) == (1, 2, 2, 0)
    assert set(p["loss_sums"]) == {"hm", "reg", "sem", "total"} and p["time_s"] > 0
    a = torch.load(full / "last.pt", weights_only=True)
    for name, c in (("new", ck), ("old", _old_checkpoint(ck))):
        run = tmp_path / name
        run.mkdir()
        torch.save(c, run / "last.pt")
        (run / "metrics.jsonl").write_text((full / "metrics.jsonl").read_text().splitlines()[0] + "\n")
        r = _train(data, run, *args, "--resume")
        assert r.exit_code == 0, r.output
        assert "resuming epoch 2 after batch 2/4 (step 6)" in r.output
        b = torch.load(run / "last.pt", weights_only=True)
        assert b["step"] == a["step"] == 8 and "progress" not in b
        for k in a["model"]:
            assert torch.equal(a["model"][k], b["model"][k]), (name, k)
        assert _rows(run)[-1]["train/total"] == _rows(full)[-1]["train/total"]
        assert _rows(run)[-1]["train/frames"] == 4


def test_resume_without_checkpoint_is_an_error(data, tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(data / "train"), "--out", str(tmp_path / "x"),
                                  "--config", str(data / "config.json"), "--resume"])
    assert r.exit_code == 2 and "no last.pt" in r.output


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert _train(data, run, "--epochs", "1").exit_code == 0
    before = _sha(run / "last.pt")

    import mtl.losses

    real = mtl.losses.compute_losses

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms["hm"] = terms["hm"] * float("nan")
        return terms

    monkeypatch.setattr(mtl.losses, "compute_losses", poisoned)
    r = CliRunner().invoke(main, ["train", "--data", str(data / "train"), "--out", str(run), "--config",
                                  str(data / "config.json"), "--epochs", "2", "--resume", "--no-progress"])
    assert r.exit_code == 7, r.output
    assert "non-finite loss at epoch 2" in r.output and "last good checkpoint kept" in r.output
    assert _sha(run / "last.pt") == before
    assert [row["epoch"] for row in _rows(run)] == [1]


def test_huge_lr_diverges_with_a_clear_error(data, tmp_path):
    r = CliRunner().invoke(main, ["train", "--data", str(data / "train"), "--out", str(tmp_path / "run"),
                                  "--config", str(data / "config.json"), "--epochs", "3", "--lr", "1e30",
                                  "--no-progress"])
    assert r.exit_code == 7, r.output
    assert "\nerror: " in r.output and "non-finite loss at epoch 1" in r.output


def test_shard_sampler_splits_frames_without_repeats():
    """Validation shards: contiguous, in rank order, every frame once (DistributedSampler pads the short
    shards with repeated frames); lower ranks take the extra frames, so rank 0 has one whenever n > 0."""
    from mtl.evaluate import ShardSampler

    assert [list(ShardSampler(5, r, 2)) for r in range(2)] == [[0, 1, 2], [3, 4]]
    assert [list(ShardSampler(45, r, 4)) for r in range(4)] == [list(range(0, 12)), list(range(12, 23)),
                                                                  list(range(23, 34)), list(range(34, 45))]
    assert [list(ShardSampler(1, r, 2)) for r in range(2)] == [[0], []] and len(ShardSampler(1, 1, 2)) == 0
    assert list(ShardSampler(3)) == [0, 1, 2]


@pytest.mark.slow
def test_torchrun_two_processes(data, tmp_path):
    if importlib.util.find_spec("torch.distributed.run") is None:    # what the command below runs
        pytest.skip("torch.distributed.run not available")
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "mtl.cli",
           "train", "--data", str(data / "train"), "--val", str(data / "val_odd"), "--out", str(run),
           "--config", str(data / "config.json"), "--epochs", "2", "--batch-size", "1", "--no-progress"]
    p = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    rows = _rows(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    # 4 frames over 2 ranks x batch 1: 2 steps per epoch
    assert rows[-1]["step"] == 4
    assert "2 process(es)" in p.stdout
    assert (run / "last.pt").is_file() and (run / "best.pt").is_file()

    # 5 validation frames on 2 ranks (3 + 2): each scored once, exactly like one process scores them
    # (DistributedSampler would pad rank 1 with frame 0 and count 6 frames and frame 0's boxes twice)
    ref_json = tmp_path / "single.json"
    p = subprocess.run([sys.executable, "-m", "mtl.cli", "eval", "--checkpoint", str(run / "last.pt"), "--data",
                        str(data / "val_odd"), "--batch-size", "1", "--out", str(ref_json), "--no-progress"],
                       check=False, capture_output=True, text=True, timeout=300, env=env)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    ref, got = json.loads(ref_json.read_text()), rows[-1]
    assert got["val/frames"] == ref["frames"] == 5
    assert {c: got[f"val/n_gt/{c}"] for c in ref["n_gt"]} == ref["n_gt"] and sum(ref["n_gt"].values()) > 5
    for key in ("miou", "pixel_acc", "mean_acc", "map"):
        assert got[f"val/{key}"] == ref[key], key
    for cls, by_th in ref["ap_by_threshold"].items():
        assert {th: got[f"val/ap_by_threshold/{cls}/{th}"] for th in by_th} == by_th, cls
    assert got["val/loss/total"] == pytest.approx(ref["loss"]["total"], rel=1e-9)
