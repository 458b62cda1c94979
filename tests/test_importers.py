"""Importers on tiny trees in the published layouts, built here."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from next3d_gen.camera import intrinsics_from_fov, look_at, to_eg3d_label
from next3d_gen.errors import UserError
from next3d_gen.h5 import SampleReader
from next3d_gen.importers.synthforge_release import decode_seg, import_synthforge_release
from next3d_gen.labels import FACESYNTHETICS, IGNORE_INDEX, SYNTH, SYNTH_V1
from next3d_gen.render.next3d import world_to_flame
from synthforge.cli import main

SIZE = 32


def _release_tree(root: Path, n: int = 2) -> dict:
    for d in ("images", "seg", "depth", "annotations"):
        (root / d).mkdir(parents=True)
    rng = np.random.default_rng(0)
    truth = {}
    K = intrinsics_from_fov(15.0, SIZE, SIZE)[None]
    eye = torch.tensor([[0.3, -0.2, 2.6]])
    c2w = look_at(eye, torch.tensor([0.0, 0.0, 0.2]))
    label = to_eg3d_label(K, c2w, SIZE, SIZE)[0]
    for i in range(n):
        stem = f"{i:05d}"
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / "images" / f"{stem}.png")
        ids = np.zeros((SIZE, SIZE), np.uint8)
        ids[4:20, 6:26] = 1 + i  # face or forehead
        ids[8:12, 8:14] = 7  # right eyeball
        ids[14:16, 10:22] = 12  # upper lip
        rgb = np.full((SIZE, SIZE, 3), 255, np.uint8)
        fg = ids > 0
        rgb[fg] = np.asarray(SYNTH.palette, np.uint8)[ids[fg]]
        rgb[0, 0] = (0x00, 0xFF, 0xF1)  # unlisted lower-neck cyan -> background
        blend = (np.asarray(SYNTH.palette[7], float) + np.asarray(SYNTH.palette[1 + i], float)) / 2
        rgb[12, 8] = blend.astype(np.uint8)  # anti-aliased border -> ignore
        ids[12, 8] = IGNORE_INDEX
        Image.fromarray(rgb).save(root / "seg" / f"{stem}.png")
        depth8 = rng.integers(0, 255, (SIZE // 2, SIZE // 2), dtype=np.uint8)
        Image.fromarray(depth8).save(root / "depth" / f"{stem}.png")
        kps = rng.uniform(0, SIZE, (68, 2))
        ann = {
            "z": rng.normal(size=8).tolist(),
            "camera_params": label.tolist(),
            "flame_shape": rng.normal(size=100).tolist(),
            "flame_exp": rng.normal(size=50).tolist(),
            "flame_pose": [0.1, 0.2, 0.3, 0.4, 0.0, 0.0],
            "2d_kps": kps.tolist(),
            "fan_kps": kps.tolist(),
            "mse": 3.0,
        }
        (root / "annotations" / f"{stem}.json").write_text(json.dumps(ann))
        truth[i] = {"ids": ids, "kps": kps, "ann": ann}
    truth["K"], truth["eye"], truth["c2w"] = K[0], eye[0], c2w[0]
    return truth


def test_decode_seg_nearest_colour_with_threshold():
    palette = np.asarray(SYNTH_V1.palette, np.uint8)  # the release's colours: the 20-class space
    noisy = (palette[1:].astype(int) + np.array([4, -4, 3])).clip(0, 255)
    rgb = np.stack([palette[1:], noisy, np.full((19, 3), 255)], axis=0).astype(np.uint8)
    ids = decode_seg(rgb)
    assert ids[0].tolist() == list(range(1, 20))
    assert ids[1].tolist() == list(range(1, 20))  # small colour noise still matches
    assert (ids[2] == 0).all()  # white background
    # the release has no hair / eyeglasses class: their SYNTH colours never decode to those ids
    extra = np.asarray(SYNTH.palette[SYNTH_V1.num_classes :], np.uint8)[None]
    assert np.isin(decode_seg(extra), [*range(SYNTH_V1.num_classes), IGNORE_INDEX]).all()


def test_synthforge_release_import(tmp_path: Path):
    truth = _release_tree(tmp_path / "release")
    path = import_synthforge_release(tmp_path / "release", tmp_path / "out")
    r = SampleReader(path)
    assert len(r) == 2 and r.label_space.name == SYNTH.name and r.attrs["depth_kind"] == "relative"
    for i in range(2):
        s = r[i]
        assert np.array_equal(s["seg"], truth[i]["ids"])
        np.testing.assert_allclose(s["landmarks_2d"], truth[i]["kps"] - 0.5, atol=1e-4)
        np.testing.assert_allclose(s["camera_K"], truth["K"].numpy(), atol=1e-3)
        # Camera position: Next3D world units -> FLAME metres; rotation unchanged.
        np.testing.assert_allclose(s["camera_cam2world"][:3, 3], world_to_flame(truth["eye"]).numpy(), atol=1e-5)
        np.testing.assert_allclose(s["camera_cam2world"][:3, :3], truth["c2w"][:3, :3].numpy(), atol=1e-6)
        np.testing.assert_allclose(s["flame_pose"][[0, 1, 2, 6, 7, 8]], [0.1, 0.2, 0.3, 0.4, 0.0, 0.0], atol=1e-7)
        assert (s["flame_pose"][[3, 4, 5, 9, 10, 11, 12, 13, 14]] == 0).all()
        fg = (truth[i]["ids"] > 0) & (truth[i]["ids"] != IGNORE_INDEX)
        assert (s["depth"][~fg] == 0).all() and (s["depth"][fg] > 0).all() and (s["depth"] <= 1).all()
        assert s["bbox"].tolist() == [5.5, 3.5, 25.5, 19.5]


def test_synthforge_release_bad_annotation(tmp_path: Path):
    _release_tree(tmp_path / "release", n=1)
    ann = tmp_path / "release" / "annotations" / "00000.json"
    d = json.loads(ann.read_text())
    del d["2d_kps"]
    ann.write_text(json.dumps(d))
    with pytest.raises(UserError, match=r"00000\.json: missing key '2d_kps'"):
        import_synthforge_release(tmp_path / "release", tmp_path / "out.h5")


def _facesynthetics_tree(root: Path, n: int = 3, rows: int = 70) -> list[np.ndarray]:
    root.mkdir(parents=True)
    rng = np.random.default_rng(1)
    segs = []
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)).save(root / f"{i:06d}.png")
        seg = rng.integers(0, FACESYNTHETICS.num_classes, (SIZE, SIZE)).astype(np.uint8)
        seg[0, :4] = 255
        Image.fromarray(seg).save(root / f"{i:06d}_seg.png")
        np.savetxt(root / f"{i:06d}_ldmks.txt", rng.uniform(0, SIZE, (rows, 2)))
        segs.append(seg)
    return segs


def test_facesynthetics_import_via_cli(tmp_path: Path, capsys):
    segs = _facesynthetics_tree(tmp_path / "fs")
    assert main(["import", "facesynthetics", str(tmp_path / "fs"), "--out", str(tmp_path / "out")]) == 0
    r = SampleReader(tmp_path / "out")
    assert len(r) == 3 and r.label_space.name == FACESYNTHETICS.name and r.attrs["depth_kind"] == "none"
    assert set(r.fields) == {"image", "seg", "landmarks_2d", "bbox", "sample_seed"}
    for i in range(3):
        assert np.array_equal(r[i]["seg"], segs[i])
        expected = np.loadtxt(tmp_path / "fs" / f"{i:06d}_ldmks.txt")[:68]
        np.testing.assert_allclose(r[i]["landmarks_2d"], expected, atol=1e-4)


def test_facesynthetics_bad_landmark_file_exit_2(tmp_path: Path, capsys):
    _facesynthetics_tree(tmp_path / "fs", n=1, rows=69)
    assert main(["import", "facesynthetics", str(tmp_path / "fs"), "--out", str(tmp_path / "o.h5")]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]  # above it: the progress bar
    assert last.startswith("synthforge import: error:") and "000000_ldmks.txt: 69 landmark rows" in last


def test_import_onto_an_unreadable_or_damaged_output_exit_2(tmp_path: Path, capsys):
    """The output file is untrusted too: not HDF5 -> named, left alone; a finished import whose row 1 chunk is
    damaged -> the rerun names file and row instead of accepting it."""
    import h5py

    _facesynthetics_tree(tmp_path / "fs", n=2)
    src = str(tmp_path / "fs")
    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"not an HDF5 file" * 8)
    assert main(["import", "facesynthetics", src, "--out", str(junk)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{junk} exists but is not a readable HDF5 file" in err[0]
    assert junk.read_bytes() == b"not an HDF5 file" * 8 and not (tmp_path / "junk.h5.partial").exists()
    out = tmp_path / "ok.h5"
    assert main(["import", "facesynthetics", src, "--out", str(out)]) == 0
    assert main(["import", "facesynthetics", src, "--out", str(out)]) == 0  # intact: the rerun is a no-op
    capsys.readouterr()
    with h5py.File(out, "r") as f:
        info = f["image"].id.get_chunk_info(1)
    with open(out, "r+b") as fh:
        fh.seek(info.byte_offset + 10)
        fh.write(b"\0" * 100)
    assert main(["import", "facesynthetics", src, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{out}: row 1 is damaged ('image'" in err[0], err
