"""NPZ chunk format: round trip, atomic writes, and every kind of bad chunk -> ChunkError naming the file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mtl.data.chunk import (
    HAS_ALL,
    HAS_BOXES,
    HAS_IMAGE,
    HAS_LIDAR,
    HAS_SEMANTIC,
    Frame,
    list_chunks,
    read_chunk,
    write_chunk,
)
from mtl.errors import ChunkError
from mtl.io import encode_png


def make_frame(i: int, n_points: int = 5, n_boxes: int = 2, hw: tuple[int, int] = (8, 12),
               mask: int = HAS_ALL) -> Frame:
    rng = np.random.default_rng(i)
    image = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    sem = rng.integers(0, 18, hw, dtype=np.uint8)
    boxes = np.column_stack([rng.normal(size=(n_boxes, 3)), rng.uniform(0.5, 4, (n_boxes, 3)),
                             rng.uniform(-3, 3, (n_boxes, 1))]).astype(np.float32)
    return Frame(
        frame_id=f"scene_{i}/{i:09d}",
        image_png=encode_png(image) if mask & HAS_IMAGE else b"",
        semantic_png=encode_png(sem) if mask & HAS_SEMANTIC else b"",
        points=rng.normal(size=(n_points, 4)).astype(np.float32),
        boxes=boxes, box_class=rng.integers(-1, 4, n_boxes).astype(np.int16),
        cam_matrix=np.array([[10, 0, 6], [0, 11, 4], [0, 0, 1]], np.float32) * (i + 1),
        modality_mask=mask,
    )


@pytest.fixture
def frames() -> list[Frame]:
    return [make_frame(0), make_frame(1, n_points=0, n_boxes=0), make_frame(2, n_points=9, n_boxes=3)]


def _arrays(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_round_trip_is_exact(tmp_path, frames):
    path = write_chunk(tmp_path / "c.npz", frames, {"source": "test", "sem_classes": ["a", "b"]})
    chunk = read_chunk(path)
    assert len(chunk) == 3 and chunk.meta["source"] == "test" and chunk.meta["format_version"] == 1
    for want, got in zip(frames, chunk):
        assert got.frame_id == want.frame_id and got.modality_mask == HAS_ALL
        assert got.image_png == want.image_png and got.semantic_png == want.semantic_png
        np.testing.assert_array_equal(got.points, want.points)
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_array_equal(got.box_class, want.box_class)
        np.testing.assert_array_equal(got.cam_matrix, want.cam_matrix)
        assert got.points.shape[1] == 4 and got.boxes.shape[1] == 7
    from mtl.io import decode_png

    np.testing.assert_array_equal(chunk.frame(0).image(), decode_png(frames[0].image_png, "x"))
    np.testing.assert_array_equal(chunk.frame(2).semantic(), decode_png(frames[2].semantic_png, "x"))
    assert "modality_mask" not in chunk.arrays  # all-present chunks keep the required keys only


def test_partial_frames_round_trip_with_modality_mask(tmp_path):
    frames = [make_frame(0), make_frame(1, mask=HAS_LIDAR | HAS_BOXES),
              make_frame(2, n_points=0, mask=HAS_IMAGE | HAS_SEMANTIC)]
    chunk = read_chunk(write_chunk(tmp_path / "p.npz", frames, {}))
    assert [f.modality_mask for f in chunk] == [HAS_ALL, HAS_LIDAR | HAS_BOXES, HAS_IMAGE | HAS_SEMANTIC]
    with pytest.raises(ChunkError, match="has no camera image"):
        chunk.frame(1).image()
    assert chunk.frame(2).image().shape == (8, 12, 3)


def test_atomic_write_leaves_no_temp_files_and_keeps_old_file_on_failure(tmp_path, frames, monkeypatch):
    path = write_chunk(tmp_path / "c.npz", frames, {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]
    before = path.read_bytes()

    def disk_full(*args, **kwargs):  # fault injection: the write dies half way
        args[0].write(b"PK\x03\x04 partial")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space"):
        write_chunk(path, frames[:1], {})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.npz"]


def test_writer_refuses_what_the_reader_would_reject(tmp_path):
    good = make_frame(0)
    cases = {
        "points has shape": {"points": np.zeros((4, 3), np.float32)},  # (4,3) would reshape to (3,4) silently
        "boxes has shape": {"boxes": np.zeros((2, 6), np.float32)},
        "points contains NaN": {"points": np.full((2, 4), np.nan, np.float32)},
        "non-positive": {"boxes": np.array([[0, 0, 0, 1, 0, 1, 0], [0, 0, 0, 1, 1, 1, 0]], np.float32)},
        "box_class has shape": {"box_class": np.zeros(3, np.int16)},
        "at most 64": {"frame_id": "x" * 65},
        "image_png is 0 bytes": {"image_png": b""},
    }
    for reason, change in cases.items():
        bad = Frame(**{**good.__dict__, **change})
        with pytest.raises(ChunkError, match=reason) as e:
            write_chunk(tmp_path / "bad.npz", [bad], {})
        assert str(tmp_path / "bad.npz") in str(e.value)
    with pytest.raises(ChunkError, match="empty chunk"):
        write_chunk(tmp_path / "bad.npz", [], {})
    assert not any(tmp_path.iterdir())


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    arrays = _arrays(src)
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


@pytest.fixture
def good_chunk(tmp_path, frames) -> Path:
    return write_chunk(tmp_path / "good.npz", frames, {"source": "test"})


def _expect(path: Path, reason: str) -> None:
    with pytest.raises(ChunkError, match=reason) as e:
        read_chunk(path)
    assert str(e.value).startswith(f"{path}: ") and "\n" not in str(e.value)


def test_truncated_zero_byte_and_non_zip_files(tmp_path, good_chunk):
    data = good_chunk.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    _expect(tmp_path / "trunc.npz", "corrupt or truncated")
    (tmp_path / "zero.npz").write_bytes(b"")
    _expect(tmp_path / "zero.npz", "empty")
    (tmp_path / "text.npz").write_text("hello")
    _expect(tmp_path / "text.npz", "not an npz")
    _expect(tmp_path / "absent.npz", "not found")
    flipped = bytearray(data)
    flipped[len(data) // 3: len(data) // 3 + 64] = b"\xff" * 64  # damages a member, central directory intact
    (tmp_path / "flip.npz").write_bytes(bytes(flipped))
    with pytest.raises(ChunkError):
        read_chunk(tmp_path / "flip.npz")


def test_object_arrays_are_refused_without_unpickling(tmp_path, good_chunk):
    marker = tmp_path / "unpickled"

    class Boom:  # unpickling this would create the marker file
        def __reduce__(self):
            return (Path.touch, (marker,))

    _rewrite(good_chunk, tmp_path / "obj.npz", points=np.array([Boom(), 1], dtype=object))
    _expect(tmp_path / "obj.npz", "object arrays")
    assert not marker.exists()


def test_schema_violations(tmp_path, good_chunk):
    a = _arrays(good_chunk)
    k = len(a["frame_id"])
    cases = {
        "missing keys": {"box_class": None},
        "points has dtype float64": {"points": a["points"].astype(np.float64)},
        "box_class has dtype": {"box_class": a["box_class"].astype(np.int32)},
        "frame_id has dtype": {"frame_id": np.arange(k)},
        "point_offsets must start at 0 and end": {"point_offsets": a["point_offsets"] + 1},
        "box_offsets has shape": {"box_offsets": a["box_offsets"][:-1]},
        "image_offsets is not monotonic": {"image_offsets": np.array([0, a["image_offsets"][2], a["image_offsets"][1],
                                                                       a["image_offsets"][3]], np.int64)},
        "points contains NaN": {"points": np.where(np.arange(len(a["points"]))[:, None] == 1, np.nan,
                                                    a["points"]).astype(np.float32)},
        "non-positive": {"boxes": a["boxes"] * np.array([1, 1, 1, 1, -1, 1, 1], np.float32)},
        "meta is not JSON": {"meta": np.array("{nope")},
        "meta must be a JSON object": {"meta": np.array("[1, 2]")},
        "format_version": {"meta": np.array(json.dumps({"format_version": 99}))},
        "modality_mask has unknown bits": {"modality_mask": np.full(k, 16, np.uint8)},
        "modality_mask says otherwise": {"modality_mask": np.full(k, HAS_LIDAR, np.uint8)},
        "cam_matrix has shape": {"cam_matrix": a["cam_matrix"][:, :2]},
    }
    for i, (reason, change) in enumerate(cases.items()):
        _expect(_rewrite(good_chunk, tmp_path / f"bad{i}.npz", **change), reason)


def test_corrupt_png_inside_a_chunk_is_a_chunk_error(tmp_path):
    frame = make_frame(0)
    frame.image_png = frame.image_png[:40]
    chunk = read_chunk(write_chunk(tmp_path / "c.npz", [frame], {}))
    with pytest.raises(ChunkError, match="image PNG does not decode") as e:
        chunk.frame(0).image()
    assert str(tmp_path / "c.npz") in str(e.value)


def test_list_chunks_sorted_and_ignores_temp_files(tmp_path, frames):
    for name in ("b.npz", "a.npz"):
        write_chunk(tmp_path / name, frames, {})
    (tmp_path / ".a.npz.123.tmp.npz").write_bytes(b"")
    assert [p.name for p in list_chunks(tmp_path)] == ["a.npz", "b.npz"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChunkError, match="no \\*.npz"):
        list_chunks(tmp_path / "empty")


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")     # no second error from ZipFile.__del__
def test_an_interrupt_inside_the_zip_write_stays_an_interrupt(tmp_path, monkeypatch):
    """Ctrl-C while zipfile closes a member: numpy's cleanup then raises ValueError ("Can't close the ZIP file while
    there is an open writing handle"); write_chunk raises the interrupt (the CLI's exit 130) and nothing else, and
    leaves no file."""
    import zipfile

    from conftest import tiny_cfg, tiny_frame

    cfg = tiny_cfg()
    frames = [tiny_frame(cfg, np.random.default_rng(0), "a/000")]
    close = zipfile._ZipWriteFile.close

    def interrupted_close(self):
        monkeypatch.setattr(zipfile._ZipWriteFile, "close", close)
        raise KeyboardInterrupt

    monkeypatch.setattr(zipfile._ZipWriteFile, "close", interrupted_close)
    with pytest.raises(KeyboardInterrupt):
        write_chunk(tmp_path / "c.npz", frames, {})
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".npz")]
