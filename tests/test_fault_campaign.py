"""benchmarks/fault_campaign.py: its checkers catch what they are there to catch (hand-made broken outputs of
each command), its timer replays a reference moment as worked out by hand, and a 4-kill smoke run of the real
campaign reports every kill survived."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from mtl.data.chunk import make_manifest
from mtl.io import JOURNAL, pending_commit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import fault_campaign as fc  # noqa: E402


def _files(d: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_bytes(data)
    return d


def _json(obj) -> bytes:
    return json.dumps(obj).encode()


def _with_manifest(d: Path, names: list[str], **about) -> Path:
    (d / "manifest.json").write_text(json.dumps(make_manifest(d, names, **about)))
    return d


def _pending(d: Path, names: list[str]) -> Path:
    """``d`` as a writer killed right after writing its commit journal: the new files still in staging."""
    staging = d / ".staging-1"
    staging.mkdir()
    for n in names:
        (d / n).rename(staging / n)
    (d / JOURNAL).write_text(json.dumps({"staging": staging.name, "files": names, "remove": []}))
    assert pending_commit(d)
    return d


# ------------------------------------------------------------------------------------------ convert

NEW_SUMMARY = {"chunks": [{"file": "chunk_00000.npz", "frames": 2}], "elapsed_s": 1.0}


@pytest.fixture
def chunk_sets(tmp_path):
    old = _files(tmp_path / "old", {"chunk_00000.npz": b"old 0", "chunk_00001.npz": b"old 1",
                                    "summary.json": _json({"chunks": "old"})})
    _with_manifest(old, ["chunk_00000.npz", "chunk_00001.npz", "summary.json"], kind="mtl chunks")
    new = _files(tmp_path / "new", {"chunk_00000.npz": b"new 0", "summary.json": _json(NEW_SUMMARY)})
    _with_manifest(new, ["chunk_00000.npz", "summary.json"], kind="mtl chunks")
    ref = {"old": fc.visible_files(old), "chunks": {"chunk_00000.npz": fc.sha256(new / "chunk_00000.npz")},
           "summary": fc.without(NEW_SUMMARY, fc.CONVERT_VOLATILE)}
    return old, new, ref


def _convert_state(d: Path, ref: dict):
    return fc.convert_state(d, ref["old"], ref["chunks"], ref["summary"])


def test_convert_checker_tells_old_and_new_from_a_mixed_set(chunk_sets, tmp_path):
    old, new, ref = chunk_sets
    assert _convert_state(old, ref) == ("old", [])
    assert _convert_state(new, ref) == ("new", [])
    assert fc.chunk_reader_problems(new) == []
    # the new set committed but the old chunk_00001 left beside it: mixed, and the real reader says so too
    mixed = _files(tmp_path / "mixed", {"chunk_00001.npz": b"old 1"})
    _files(mixed, {n: (new / n).read_bytes() for n in ("chunk_00000.npz", "summary.json", "manifest.json")})
    state, problems = _convert_state(mixed, ref)
    assert state == "mixed" and any("chunk_00001.npz: not listed in manifest.json" in p for p in problems)
    assert any("not listed in manifest.json" in p for p in fc.chunk_reader_problems(mixed))
    # new chunks under the old summary; a manifest that lies about a size
    _files(mixed, {"summary.json": (old / "summary.json").read_bytes()})
    (mixed / "chunk_00001.npz").unlink()
    assert any("summary.json" in p for p in _convert_state(mixed, ref)[1])
    man = json.loads((new / "manifest.json").read_text())
    man["files"][0]["size"] += 1
    (new / "manifest.json").write_text(json.dumps(man))
    assert "chunk_00000.npz: differs from what manifest.json records" in _convert_state(new, ref)[1]


def test_convert_checker_wants_the_reader_to_refuse_a_pending_commit_that_rolls_forward_to_the_new_set(
        chunk_sets, tmp_path):
    old, new, ref = chunk_sets
    want = (ref["old"], ref["chunks"], ref["summary"])
    d = _pending(new, ["chunk_00000.npz", "summary.json", "manifest.json"])
    assert fc.chunk_reader_problems(d) == []            # list_chunks refuses it: as it must
    assert fc.convert_after_kill(d, *want) == []        # and the commit rolls forward to the new set
    assert pending_commit(d) and not (d / "chunk_00000.npz").exists()     # the check used a copy
    (d / ".staging-1" / "chunk_00000.npz").write_bytes(b"torn")
    problems = fc.convert_after_kill(d, *want)
    assert "the pending commit rolls forward to the mixed set, not the new one" in problems
    assert fc.leftovers(d) == [f"left {JOURNAL}, .staging-1 behind"]


# ------------------------------------------------------------------------------------------ train


def _ckpt(run: Path, name: str, epoch: int, best_epoch: int = 0, w: float = 0.0) -> None:
    torch.save({"epoch": epoch, "step": 2 * epoch, "best_epoch": best_epoch, "model": {"w": torch.full((2,), w)}},
               run / name)


def _run(d: Path, last: tuple[int, int], best: int | None, rows: list[int]) -> Path:
    d.mkdir()
    _ckpt(d, "last.pt", *last)
    if best is not None:
        _ckpt(d, "best.pt", best)
    (d / "metrics.jsonl").write_text("".join(json.dumps({"epoch": e, "epoch_time": 1.0 + e}) + "\n" for e in rows))
    return d


def test_train_checker_catches_a_lost_best_model_missing_rows_and_torn_files(tmp_path):
    assert fc.run_problems(_run(tmp_path / "ok", (2, 2), 2, [1, 2]), committed=True) == []
    lost = fc.run_problems(_run(tmp_path / "lost", (2, 2), 1, [1, 2]), committed=True)
    assert lost and "the best model was lost" in lost[0]
    rows = fc.run_problems(_run(tmp_path / "rows", (2, 1), 1, [1]), committed=True)
    assert rows == ["metrics.jsonl rows of epochs [1], but last.pt has committed 2"]
    torn = _run(tmp_path / "torn", (1, 1), 1, [1])
    with open(torn / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "lo')
    (torn / "last.prev.pt").write_bytes(b"PK\x03\x04 half a zip")
    problems = fc.run_problems(torn, committed=True)
    assert any(p.startswith("last.prev.pt does not load") for p in problems)
    assert "metrics.jsonl line 2 is torn / not JSON" in problems
    orphan = _run(tmp_path / "orphan", (1, 1), 1, [1])
    (orphan / "last.pt").unlink()
    assert fc.run_problems(orphan, committed=True) == ["best.pt or metrics rows without a last.pt"]


def test_train_checker_rolls_a_pending_epoch_commit_forward_on_a_copy(tmp_path):
    run = _run(tmp_path / "run", (2, 2), 2, [1, 2])
    _pending(run, ["best.pt", "metrics.jsonl", "last.pt"])
    _ckpt(run, "last.pt", 1, 1)                         # epoch 1's set is still in place
    _ckpt(run, "best.pt", 1)
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    assert fc.train_after_kill(run) == [] and pending_commit(run)
    (run / ".staging-1" / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")    # the new row missing
    assert fc.train_after_kill(run) == ["rolled forward: metrics.jsonl rows of epochs [1], but last.pt has "
                                        "committed 2"]


def test_train_reference_comparison_is_bit_exact_on_weights_and_ignores_timings(tmp_path):
    ref = _run(tmp_path / "ref", (2, 2), 2, [1, 2])
    same = _run(tmp_path / "same", (2, 2), 2, [1, 2])
    rows = (same / "metrics.jsonl").read_text()
    (same / "metrics.jsonl").write_text(rows.replace('"epoch_time": 2', '"epoch_time": 9'))
    assert fc.train_matches_reference(same, ref) == []
    _ckpt(same, "best.pt", 2, w=1e-7)
    assert fc.train_matches_reference(same, ref) == [
        "best.pt: 1 tensors differ from the uninterrupted run (e.g. w)"]


# ------------------------------------------------------------------------------------------ export


@pytest.fixture
def export_sets(tmp_path):
    def export(d: Path, sha: str, models: dict[str, bytes]) -> Path:
        _files(d, {**models, "export_report.json": _json({"checkpoint_sha256": sha, "created": str(d)}),
                   "export_report.md": b"# report"})
        return _with_manifest(d, [*models, "export_report.json", "export_report.md"], kind="mtl export",
                              checkpoint_sha256=sha)

    old = export(tmp_path / "old", "a" * 64, {"model.onnx": b"A fp32", "model_fp16.onnx": b"A fp16"})
    new = export(tmp_path / "new", "b" * 64, {"model.onnx": b"B fp32"})
    return old, new, fc.visible_files(old)


def test_export_checker_refuses_a_model_of_the_old_set_left_beside_the_new_one(export_sets, tmp_path):
    old, new, old_files = export_sets
    assert fc.export_state(old, old_files, new) == ("old", [])
    assert fc.export_state(new, old_files, new) == ("new", [])
    left = _files(tmp_path / "left", {n: (new / n).read_bytes() for n in fc.visible_files(new)})
    _files(left, {"model_fp16.onnx": b"A fp16"})
    state, problems = fc.export_state(left, old_files, new)
    assert state == "mixed" and "model_fp16.onnx: not listed in manifest.json (two sets mixed)" in problems
    # a report of the old checkpoint beside the new models
    _files(left, {"export_report.json": (old / "export_report.json").read_bytes()})
    (left / "model_fp16.onnx").unlink()
    assert "export_report.json does not describe the new models" in fc.export_state(left, old_files, new)[1]


def test_export_reader_must_refuse_a_pending_commit(export_sets):
    old, new, old_files = export_sets
    ref = _files(new.parent / "ref", {n: (new / n).read_bytes() for n in fc.visible_files(new)})
    d = _pending(new, ["model.onnx", "export_report.json", "export_report.md", "manifest.json"])
    assert fc.export_reader_problems(d) == []           # check_export_set refuses it, as it must
    assert fc.export_after_kill(d, old_files, ref) == []
    (d / ".staging-1" / "model.onnx").write_bytes(b"A fp32")
    assert "the pending commit rolls forward to the mixed set, not the new one" in fc.export_after_kill(
        d, old_files, ref)


# ------------------------------------------------------------------------------------------ infer


def _frame(fid: str, model: str, score: float, timing: float = 1.0) -> bytes:
    return _json({"frame_id": fid, "model_sha256": model, "detections": [score], "timing_ms": {"total": timing}})


def _summary(model: str, miou: float, resumed: int = 0, wall_s: float = 1.0) -> bytes:
    return _json({"model_sha256": model, "frames_written": 2, "frames_resumed": resumed, "wall_s": wall_s,
                  "frames_skipped": {"bad chunk": 1}, "metrics": {"miou": miou}, "files": ["a", "b"]})


def test_infer_checker_catches_frames_of_two_models_and_a_finished_frame_without_its_image(tmp_path):
    old = _files(tmp_path / "old", {"frames/a.json": _frame("a", "A", 0.1), "frames/a_sem.png": b"A a",
                                    "frames/b.json": _frame("b", "A", 0.2), "frames/b_sem.png": b"A b",
                                    "summary.json": _summary("A", 0.1)})
    new = _files(tmp_path / "new", {"frames/a.json": _frame("a", "B", 0.3), "frames/a_sem.png": b"B a",
                                    "frames/a_sem_color.png": b"B a colour",
                                    "frames/b.json": _frame("b", "B", 0.4), "frames/b_sem.png": b"B b",
                                    "summary.json": _summary("B", 0.2)})
    v_old, v_new = fc.infer_view(old), fc.infer_view(new)
    assert fc.infer_state(old, v_old, v_new)[0] == "old"
    # a --resume's summary: timings and how many frames were kept aside, its metrics must be the same
    resumed = _files(tmp_path / "resumed", {**{n: (new / n).read_bytes() for n in v_new},
                                            "summary.json": _summary("B", 0.2, resumed=1, wall_s=9.0)})
    assert fc.infer_view(resumed) == v_new
    _files(resumed, {"summary.json": _summary("B", 0.25, resumed=1)})
    assert fc.infer_state(resumed, v_old, v_new) == (
        "mixed", ["neither the old results nor the new ones (e.g. ['summary.json'] differ from the new ones)"])
    retimed = _files(tmp_path / "retimed", {**{n: (new / n).read_bytes() for n in v_new},
                                            "frames/a.json": _frame("a", "B", 0.3, timing=7.0)})
    assert fc.infer_state(retimed, v_old, v_new)[0] == "new"          # timings aside
    mixed = _files(tmp_path / "mixed", {**{n: (new / n).read_bytes() for n in v_new},
                                        "frames/b.json": _frame("b", "A", 0.2), "frames/b_sem.png": b"A b"})
    state, problems = fc.infer_state(mixed, v_old, v_new)
    assert state == "mixed" and "frames/b.json" in problems[0]
    # a killed run: a finished frame equal to the reference passes; one without its image, or another model's, not
    part = _files(tmp_path / "part", {"frames/a.json": (new / "frames/a.json").read_bytes(),
                                      "frames/a_sem.png": b"B a", "frames/a_sem_color.png": b"B a colour",
                                      "frames/b_sem.png": b"half"})
    assert fc.infer_prefix_problems(part, v_new) == []
    (part / "frames/a_sem_color.png").write_bytes(b"torn")
    assert fc.infer_prefix_problems(part, v_new) == [
        "frames/a_sem_color.png is missing or differs while its frame is finished"]
    (part / "frames/a_sem_color.png").write_bytes(b"B a colour")
    (part / "frames/a_sem.png").unlink()
    _files(part, {"frames/b.json": _frame("b", "A", 0.2)})
    assert fc.infer_prefix_problems(part, v_new) == [
        "frames/a_sem.png is missing or differs while its frame is finished",
        "frames/b.json differs from the uninterrupted run's",
        "frames/b_sem.png is missing or differs while its frame is finished"]


# ------------------------------------------------------------------------------------------ timing


def test_a_timer_kill_replays_the_reference_moment_on_the_runs_progress():
    ref = [1.0, 2.0, 4.0]                     # the reference run passed its write points at 1, 2 and 4 s
    assert fc.replay(0.5, ref, []) == 0.5     # before the first write: the same time after the start
    assert fc.replay(3.0, ref, [2.0]) is None                   # waits until this run has passed 2 points
    assert fc.replay(3.0, ref, [2.0, 4.0]) == 4.0 + 1.0 * 2.0  # 1 s after point 2, this run 2x slower
    assert fc.replay(3.0, ref, [0.1, 0.2]) == 0.2 + 1.0 * 0.5  # stretch kept within [0.5, 4]
    assert fc.phase([]) == "before any write"
    assert fc.phase(["write chunk_00000.npz"]) == "between writes"
    assert fc.phase(["write summary.json", "commit journal"]) == "inside a commit"
    assert fc.phase(["commit journal", "commit manifest.json", "commit done"]) == "after a commit"


# ------------------------------------------------------------------------------------------ the campaign


@pytest.mark.slow
def test_a_four_kill_smoke_campaign_loses_nothing(tmp_path):
    """4 real SIGKILLs (convert --overwrite and train + --resume; export and infer are in the full campaign:
    their setup alone takes a minute here) of `python -m mtl.cli` processes, checked and re-run."""
    res = fc.campaign(4, seed=1, jobs=1, commands=("convert", "train"), work=tmp_path / "work", say=lambda s: None)
    assert res["totals"] == {"kills": 4, "survived": 4, "lost": 0}, res["lost"]
    per = res["per_command"]
    assert per["convert"]["kills"] >= 2 and per["train"]["kills"] >= 2
    assert sum(r["rerun_s"] is not None for r in res["kills"]) == len({r["trial"] for r in res["kills"]})
    assert "survived 4/4, lost 0" in fc.markdown(res)
    assert not list((tmp_path / "work" / "trials").iterdir())      # survived trials leave nothing behind


@pytest.mark.slow
def test_a_four_kill_infer_campaign_on_tiny_exports_loses_nothing(tmp_path):
    """4 real SIGKILLs of `mtl infer` on the campaign's own input (frames of every modality and a truncated
    chunk; --eval --skip-bad --overlay), with two tiny random-weight exports instead of trained ones: the
    --overwrite of the other model's results and a fresh run continued with --resume are both killed."""
    pytest.importorskip("onnxruntime")
    from test_runtime import export_tiny, runtime_cfg, save_tiny_checkpoint

    fx, cfg = fc.Fixtures(tmp_path / "work"), runtime_cfg()
    fc.write_infer_data(fx.p("infer_data"), cfg)
    old, new = (export_tiny(save_tiny_checkpoint(cfg, tmp_path / m / "ckpt.pt", seed=i), tmp_path / m / "model.onnx")
                for i, m in enumerate(("old", "new")))
    fc.build_infer_fixtures(fx, old, new)
    ref = fx.infer_fresh["summary.json"]
    assert ref["modalities"] == {"camera+lidar": 4, "camera-only": 1, "lidar-only": 1}
    assert ref["frames_skipped"] == {"bad chunk": 1} and ref["metrics"]["frames"] == 5
    assert fx.infer_new == fx.infer_fresh != fx.old_files["infer"]

    res = fc.campaign(4, seed=0, jobs=1, commands=("infer",), work=fx.work, say=lambda s: None, fixtures=fx)
    assert res["totals"] == {"kills": 4, "survived": 4, "lost": 0}, res["lost"]
    assert {r["variant"] for r in res["kills"]} >= {"overwrite", "fresh"}
    assert not list((fx.work / "trials").iterdir())
