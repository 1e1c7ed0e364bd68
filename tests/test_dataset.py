"""ChunkDataset: sample keys / shapes / dtypes, modality skipping, resize, flip consistency, collate, counts."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import TINY_HW, tiny_cfg, tiny_frame, write_tiny_chunks

from mtl.config import Config
from mtl.data.chunk import HAS_ALL, HAS_IMAGE, HAS_LIDAR, HAS_SEMANTIC
from mtl.geometry import cam_matrix, points_in_boxes, project_points, scale_cam_matrix


@pytest.fixture
def tiny(tmp_path):
    cfg = tiny_cfg()
    return cfg, write_tiny_chunks(tmp_path / "chunks", cfg, n_frames=5, per_chunk=2)


def test_sample_keys_shapes_dtypes(tiny):
    from mtl.dataset import ChunkDataset

    cfg, d = tiny
    ds = ChunkDataset(d, cfg)
    assert len(ds) == 5
    s = ds[4]
    h, w = cfg.camera.image_hw
    hh, hw_ = cfg.grid.head_shape
    assert s["image"].shape == (3, h, w) and s["image"].dtype == torch.float32
    assert s["bev"].shape == (cfg.grid.n_channels, *cfg.grid.shape) and s["bev"].dtype == torch.float32
    assert s["heatmap"].shape == (cfg.classes.n_det, hh, hw_)
    assert s["reg"].shape == (8, hh, hw_) and s["reg_mask"].shape == (hh, hw_)
    assert s["semantic"].shape == (h, w) and s["semantic"].dtype == torch.int64
    assert int(s["semantic"][0, 0]) == 255
    assert isinstance(s["boxes"], np.ndarray) and s["boxes"].shape[1] == 7
    assert s["box_class"].shape == (len(s["boxes"]),)
    assert isinstance(s["frame_id"], str) and s["frame_id"] == "tiny/0_004"
    assert float(s["reg_mask"].sum()) >= 1 and float(s["heatmap"].max()) == 1.0


def test_collate(tiny):
    from mtl.dataset import ChunkDataset, collate

    cfg, d = tiny
    ds = ChunkDataset(d, cfg)
    b = collate([ds[0], ds[1], ds[2]])
    assert b["image"].shape[0] == 3 and b["semantic"].shape[0] == 3 and b["bev"].shape[0] == 3
    assert isinstance(b["boxes"], list) and len(b["boxes"]) == 3 and isinstance(b["frame_id"], list)


def test_frames_missing_a_modality_are_skipped(tmp_path):
    from mtl.dataset import ChunkDataset

    cfg = tiny_cfg()
    d = write_tiny_chunks(tmp_path / "c", cfg, n_frames=4, masks={1: HAS_ALL & ~HAS_IMAGE & ~HAS_SEMANTIC,
                                                                   3: HAS_ALL & ~HAS_LIDAR})
    with pytest.warns(UserWarning, match="skipped 2 frame"):
        ds = ChunkDataset(d, cfg)
    assert len(ds) == 2 and ds.skipped == 2
    assert [ds[i]["frame_id"] for i in range(2)] == ["tiny/0_000", "tiny/0_002"]


def test_stored_size_differs_is_resized(tmp_path):
    from mtl.dataset import ChunkDataset

    cfg = tiny_cfg()
    d = write_tiny_chunks(tmp_path / "c", cfg, n_frames=2, hw=(64, 128))
    s = ChunkDataset(d, cfg)[0]
    assert s["image"].shape == (3, *TINY_HW) and s["semantic"].shape == TINY_HW
    assert set(np.unique(s["semantic"].numpy())) <= set(range(cfg.classes.n_sem)) | {255}


def test_flip_lidar_boxes_twice_is_identity_and_points_stay_inside():
    from mtl.dataset import flip_lidar_boxes

    cfg = tiny_cfg()
    f = tiny_frame(cfg, np.random.default_rng(3), "x")
    inside = points_in_boxes(f.points, f.boxes)
    p1, b1 = flip_lidar_boxes(f.points, f.boxes)
    assert np.array_equal(points_in_boxes(p1, b1), inside)
    assert inside.any()
    p2, b2 = flip_lidar_boxes(p1, b1)
    assert np.array_equal(p2, f.points) and np.array_equal(b2, f.boxes)


def test_image_flip_about_cx_matches_projection():
    """y -> -y moves a point's pixel column from u to 2 cx - u: the image flip is about cx, not the centre."""
    from mtl.dataset import flip_about_cx

    cfg = Config()
    k = scale_cam_matrix(cam_matrix(cfg.camera), cfg.camera.resolution_wh, cfg.camera.image_hw)
    pts = np.array([[10.0, 2.0, -1.0], [25.0, -4.0, 0.5]])
    u, v, _ = project_points(pts, k)
    u2, v2, _ = project_points(pts * [1, -1, 1], k)
    np.testing.assert_allclose(u2, 2 * k[0, 2] - u, atol=1e-9)
    np.testing.assert_allclose(v2, v, atol=1e-9)
    # a one-pixel marker at integer column u0 lands at round(2 cx - u0); flipping twice restores labels
    h, w = 8, 512
    lab = np.zeros((h, w), np.uint8)
    lab[:, 100] = 7
    once = flip_about_cx(lab, k[0, 2], nearest=True, fill=255)
    assert np.flatnonzero(once[0] == 7).tolist() == [int(np.rint(2 * k[0, 2] - 100))]
    twice = flip_about_cx(once, k[0, 2], nearest=True, fill=255)
    margin = int(np.ceil(abs(2 * k[0, 2] - (w - 1)))) + 1   # columns that came from outside the image
    assert np.array_equal(twice[:, margin: w - margin], lab[:, margin: w - margin])
    # with cx exactly at the centre it is a plain mirror
    img = np.random.default_rng(0).integers(0, 255, (4, 6, 3)).astype(np.uint8)
    assert np.array_equal(flip_about_cx(img, 2.5), img[:, ::-1])


def test_augmentation_is_consistent_and_reproducible(tiny):
    from mtl.dataset import ChunkDataset

    cfg, d = tiny
    plain = ChunkDataset(d, cfg, augment=False)
    aug = ChunkDataset(d, cfg, augment=True, seed=5)
    again = ChunkDataset(d, cfg, augment=True, seed=5)
    flipped = 0
    for i in range(len(plain)):
        a, p = aug[i], plain[i]
        assert torch.equal(a["bev"], again[i]["bev"])                        # same (seed, epoch, index)
        if torch.equal(a["bev"], p["bev"]):
            continue
        flipped += 1
        # y -> -y mirrors the BEV columns (symmetric y range) and the head maps
        assert torch.equal(a["bev"], p["bev"].flip(-1))
        assert torch.equal(a["heatmap"], p["heatmap"].flip(-1))
        assert torch.equal(a["reg_mask"], p["reg_mask"].flip(-1))
        np.testing.assert_allclose(a["boxes"][:, 1], -p["boxes"][:, 1])
        np.testing.assert_allclose(a["boxes"][:, 6], -p["boxes"][:, 6])
        # camera: the semantic map is mirrored about cx (nearest); the interior matches a plain mirror
        # shifted by round(2 cx - (W - 1))
        cx = float(ChunkDataset(d, cfg)._chunk(aug.index[i][0]).frame(aug.index[i][1]).cam_matrix[0, 2])
        shift = int(np.rint(2 * cx - (TINY_HW[1] - 1)))
        mirrored = p["semantic"].flip(-1)
        w = TINY_HW[1]
        sl = slice(abs(shift) + 1, w - abs(shift) - 1)
        cols = np.arange(w)[sl]
        assert torch.equal(a["semantic"][:, cols], mirrored[:, cols - shift])
    assert 0 < flipped < len(plain) or len(plain) < 3
    aug.set_epoch(1)
    assert any(not torch.equal(aug[i]["bev"], again[i]["bev"]) for i in range(len(plain)))


def test_semantic_class_counts(tiny):
    from mtl.dataset import ChunkDataset, semantic_class_counts

    cfg, d = tiny
    total, per = semantic_class_counts(d, cfg.classes.n_sem)
    assert total.shape == (cfg.classes.n_sem,) and per.shape == (5, cfg.classes.n_sem)
    assert total.dtype == np.int64 and np.array_equal(per.sum(0), total)
    ds = ChunkDataset(d, cfg)
    sem = ds[0]["semantic"].numpy()
    assert np.array_equal(per[0], np.bincount(sem[sem != 255], minlength=cfg.classes.n_sem))
