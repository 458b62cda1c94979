"""HDF5 integrity: the reader's Fletcher-32 against HDF5's, damaged rows detected (never returned), skipped in
training with a warning and a count, named by the commands; unreadable outputs; a full disk; the image-size limit."""

from __future__ import annotations

import errno
import logging
import shutil
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from next3d_gen import h5
from next3d_gen.errors import UserError
from next3d_gen.pipeline import SamplePipeline, generate_shard
from next3d_gen.sampling import config_from_dict
from synthforge import cli

sys.path.insert(0, str(Path(__file__).parent))
from gen_fixtures import PaletteRenderer, tiny_config_dict, tiny_head_model  # noqa: E402


def fletcher32_reference(data: bytes) -> int:
    """Line-by-line port of ``H5_checksum_fletcher32`` (HDF5 ``src/H5checksum.c``): 360-word blocks, 32-bit sums
    folded after each block, big-endian 16-bit words, odd trailing byte as a high byte, two final folds."""
    n, s1, s2, i = len(data) // 2, 0, 0, 0
    while n:
        t = min(n, 360)
        n -= t
        for _ in range(t):
            s1 = (s1 + ((data[i] << 8) | data[i + 1])) & 0xFFFFFFFF
            s2 = (s2 + s1) & 0xFFFFFFFF
            i += 2
        s1 = (s1 & 0xFFFF) + (s1 >> 16)
        s2 = (s2 & 0xFFFF) + (s2 >> 16)
    if len(data) % 2:
        s1 += data[i] << 8
        s2 += s1
        s1 = (s1 & 0xFFFF) + (s1 >> 16)
        s2 = (s2 & 0xFFFF) + (s2 >> 16)
    s1 = (s1 & 0xFFFF) + (s1 >> 16)
    s2 = (s2 & 0xFFFF) + (s2 >> 16)
    return (s2 << 16) | s1


@pytest.fixture(scope="module")
def pipe():
    cfg = config_from_dict(tiny_config_dict(48))
    return SamplePipeline(cfg, model=tiny_head_model(), renderer=PaletteRenderer())


@pytest.fixture(scope="module")
def shard(pipe, tmp_path_factory) -> Path:
    """A finished 5-row shard with the default storage (image raw, label maps gzip, float16 maps shuffled)."""
    path = tmp_path_factory.mktemp("integrity") / "clean.h5"
    generate_shard(pipe, str(path), 5)
    return path


def damage(src: Path, dst: Path, field: str, row: int, nbytes: int = 100, at: int = 10) -> Path:
    """Copy ``src`` to ``dst`` and zero ``nbytes`` bytes of ``row``'s stored ``field`` chunk (the checksum trailer
    is left alone, so only the checksum can tell)."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r") as f:
        info = f[field].id.get_chunk_info(row)
        _, raw = f[field].id.read_direct_chunk((row,) + (0,) * (f[field].ndim - 1))
    at = min(at, info.size - 4 - 1)
    nbytes = min(nbytes, info.size - 4 - at)
    assert any(raw[at : at + nbytes]), "the damaged bytes must not already be zero"
    with open(dst, "r+b") as fh:
        fh.seek(info.byte_offset + at)
        fh.write(b"\0" * nbytes)
    return dst


# ------------------------------------------------------------------------------------------------ checksum


def test_fletcher32_matches_the_reference_port_on_edge_cases():
    rng = np.random.default_rng(0)
    lengths = [*range(0, 12), 719, 720, 721, 722, 1441, 4099, 20001]
    for n in lengths:
        for data in (rng.integers(0, 256, n, dtype=np.uint8), np.full(n, 255, np.uint8), np.zeros(n, np.uint8)):
            assert h5.fletcher32(data.tobytes()) == fletcher32_reference(data.tobytes()), n


def test_fletcher32_block_splitting_is_exact(monkeypatch):
    monkeypatch.setattr(h5, "_FLETCHER_BLOCK", 5)
    monkeypatch.setattr(h5, "_word_index", np.zeros(0, dtype=np.int64))
    data = np.random.default_rng(1).integers(0, 256, 333, dtype=np.uint8).tobytes()
    assert h5.fletcher32(data) == fletcher32_reference(data)


def test_checksum_equals_what_hdf5_stored_for_every_chunk(shard, pipe, tmp_path):
    """Every chunk of every dataset, as written by HDF5 (default storage, and lzf / no compression / gzip-9):
    the stored 4 trailer bytes are the little-endian Fletcher-32 of the chunk before them."""
    files = [shard]
    for k, storage in enumerate(({"compression": "lzf"}, {"compression": "none", "image_compression": "gzip",
                                                          "compression_level": 9})):  # fmt: skip
        cfg = tiny_config_dict(40)
        cfg["storage"] = storage
        p = SamplePipeline(config_from_dict(cfg), model=pipe.model, renderer=PaletteRenderer())
        files.append(tmp_path / f"s{k}.h5")
        generate_shard(p, str(files[-1]), 3)
    checked = 0
    for path in files:
        with h5py.File(path, "r") as f:
            for name, ds in f.items():
                if ds.chunks is None:
                    continue
                assert ds.fletcher32, name
                for row in range(ds.shape[0]):
                    _, raw = ds.id.read_direct_chunk((row,) + (0,) * (ds.ndim - 1))
                    assert h5.fletcher32(raw[:-4]).to_bytes(4, "little") == raw[-4:], (path.name, name, row)
                    assert h5.checksum_matches(raw)
                    if row == 0:  # the literal port agrees on real chunks too
                        assert fletcher32_reference(raw[:-4]).to_bytes(4, "little") == raw[-4:]
                    checked += 1
    assert checked > 100


# ------------------------------------------------------------------------------------------------ damaged rows


@pytest.mark.parametrize("field", ["image", "seg", "depth", "landmarks_2d"])
def test_damaged_row_is_detected_like_hdf5_does(shard, tmp_path, field):
    """image: raw chunk (fast path); seg: gzip (fast path, would be a zlib error); depth: gzip + shuffle (HDF5's
    filter path); landmarks_2d: small uncompressed chunk. h5py's own filter pipeline fails on row 2 only; the reader
    names file, row and field for row 2 and returns every other row exactly as h5py does."""
    bad = damage(shard, tmp_path / f"bad_{field}.h5", field, 2, nbytes=100 if field != "landmarks_2d" else 16)
    with h5py.File(bad, "r") as f:
        with pytest.raises(OSError, match="filter returned failure"):
            f[field][2]
        truth = {row: f[field][row] for row in (0, 1, 3, 4)}
        _, raw = f[field].id.read_direct_chunk((2,) + (0,) * (f[field].ndim - 1))
    assert not h5.checksum_matches(raw)
    with h5.SampleReader(bad) as r:
        with pytest.raises(h5.DamagedRowError) as info:
            r[2]
        for row, value in truth.items():
            assert r[row][field].tobytes() == value.tobytes()
    err = info.value
    assert (err.path, err.row, err.field) == (bad, 2, field)
    assert str(bad) in str(err) and "row 2" in str(err)
    with h5py.File(bad, "r") as f:
        found = h5.first_damaged_row(f, [n for n in f if n != "complete"])
    assert found is not None and (found.row, found.field) == (2, field)


def test_first_damaged_row_of_a_clean_file_is_none(shard):
    with h5py.File(shard, "r") as f:
        assert h5.first_damaged_row(f, [n for n in f if n != "complete"]) is None


def test_preview_of_a_damaged_shard_names_file_and_row(shard, tmp_path, capsys):
    bad = damage(shard, tmp_path / "bad_seg.h5", "seg", 2)
    png = tmp_path / "p.png"
    assert cli.main(["preview", str(bad), "--out", str(png), "--num", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{bad}: row 2" in err[0] and not png.exists()
    assert cli.main(["preview", str(bad), "--out", str(png), "--num", "2"]) == 0  # rows 0-1 are fine


def test_training_dataset_skips_a_damaged_row_with_one_warning_and_a_count(shard, tmp_path, caplog):
    from synthforge.data.dataset import DAMAGED_KEY, SynthFaceDataset

    bad = damage(shard, tmp_path / "bad.h5", "image", 2)
    clean = SynthFaceDataset(shard, crop_size=32)
    ds = SynthFaceDataset(bad, crop_size=32)
    with caplog.at_level(logging.WARNING, logger="synthforge.data.dataset"):
        items = [ds[i] for i in range(len(ds))] + [ds[2]]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and f"{bad}: row 2" in warnings[0] and "skipped" in warnings[0]
    assert [int(x[DAMAGED_KEY]) for x in items] == [0, 0, 1, 0, 0, 1]
    assert [int(x["index"]) for x in items] == [0, 1, 3, 3, 4, 3]
    assert torch.equal(items[2]["image"], clean[3]["image"])  # the damaged row is never used
    batch = torch.utils.data.default_collate(items[:4])
    assert int(batch[DAMAGED_KEY].sum()) == 1
    # from a DataLoader worker process the count still reaches the main process (it travels in the batch)
    loader = torch.utils.data.DataLoader(SynthFaceDataset(bad, crop_size=32), batch_size=5, num_workers=1)
    assert [int(b[DAMAGED_KEY].sum()) for b in loader] == [1]
    strict = SynthFaceDataset(bad, crop_size=32, skip_damaged=False)
    with pytest.raises(UserError, match=r"bad\.h5: row 2"):
        strict[2]


def test_training_skips_a_damaged_row_and_logs_the_count(tmp_path, caplog):
    """``synthforge train`` on a set with one damaged row: one warning naming file and row; the running total
    ``train/damaged_rows_skipped`` ends at 1 (the count travels in the batch, so it also works with DataLoader
    workers)."""
    import csv

    from synthforge.data.toy import write_toy_dataset

    clean = write_toy_dataset(tmp_path / "clean.h5", 8, 64, seed=0)
    bad = damage(clean, tmp_path / "train.h5", "image", 2)
    run = tmp_path / "run"
    argv = ["train", "--config", str(Path(__file__).resolve().parents[1] / "configs/stage1/tiny.yaml"),
            f"--data.train={bad}", f"--trainer.default_root_dir={run}", "--trainer.max_steps=2"]  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="synthforge.data.dataset"):
        assert cli.main(argv) == 0  # 8 rows, batch 4: one epoch
    warnings = [r.getMessage() for r in caplog.records if r.name == "synthforge.data.dataset"]
    assert len(warnings) == 1 and f"{bad}: row 2" in warnings[0]
    with open(run / "lightning_logs" / "version_0" / "metrics.csv") as f:
        logged = [float(r["train/damaged_rows_skipped"]) for r in csv.DictReader(f) if r["train/damaged_rows_skipped"]]
    assert len(logged) == 2 and logged[-1] == 1.0 and logged[0] in (0.0, 1.0)  # one value per step (2 steps)


# ------------------------------------------------------------------------------------------------ outputs


def test_generate_onto_an_unreadable_output_names_it(pipe, shard, tmp_path):
    junk = tmp_path / "x.h5"
    junk.write_text("not hdf5\n")
    with pytest.raises(UserError, match=r"x\.h5 exists but is not a readable HDF5 file"):
        generate_shard(pipe, str(junk), 5)
    assert junk.read_text() == "not hdf5\n" and not (tmp_path / "x.h5.partial").exists()
    folder = tmp_path / "out"
    folder.mkdir()
    data = shard.read_bytes()
    (folder / h5.shard_filename(0, 1)).write_bytes(data[: len(data) // 2])  # a truncated finished shard
    with pytest.raises(UserError, match=r"shard-00000-of-00001\.h5 exists but is not a readable HDF5 file"):
        generate_shard(pipe, str(folder), 5)
    assert sorted(q.name for q in folder.iterdir()) == [h5.shard_filename(0, 1)]


def test_rerun_onto_a_finished_shard_with_a_damaged_row_names_file_and_row(pipe, shard, tmp_path):
    bad = damage(shard, tmp_path / "bad.h5", "normal", 3)
    with pytest.raises(UserError, match=r"bad\.h5: row 3 is damaged \('normal'"):
        generate_shard(pipe, str(bad), 5)
    copy = tmp_path / "same.h5"
    shutil.copyfile(shard, copy)
    generate_shard(pipe, str(copy), 5)  # an intact finished shard: verified, nothing written
    assert copy.read_bytes() == shard.read_bytes()


def _full_disk_after(monkeypatch, writes: int) -> None:
    """h5py dataset writes fail with ENOSPC after ``writes`` successful ones (as HDF5 reports a full disk)."""
    original = h5py.Dataset.__setitem__
    count = {"n": 0}

    def setitem(self, key, value):  # noqa: ANN001, ANN202
        count["n"] += 1
        if count["n"] > writes:
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, key, value)

    monkeypatch.setattr(h5py.Dataset, "__setitem__", setitem)


def test_disk_full_exits_2_then_the_rerun_resumes_with_identical_rows(pipe, shard, tmp_path, monkeypatch, capsys):
    """ENOSPC in the middle of row 2 (after 2 rows of 17 fields): one stderr line naming the partial file and row,
    exit 2; rows 0-1 stay complete. After "freeing space" the same command resumes: every row's stored chunk bytes
    and every value equal the uninterrupted run's, as do the file attributes (what README's "same bytes" means)."""
    import yaml

    cfg = tiny_config_dict(48)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg))
    monkeypatch.setattr("next3d_gen.pipeline.load_head_model", lambda c: pipe.model)
    out = tmp_path / "full.h5"
    argv = ["generate", "--config", str(tmp_path / "tiny.yaml"), "--num", "5", "--out", str(out), "--no-progress",
            "--workers", "1"]  # fmt: skip
    n_fields = len(h5.FIELDS)
    with monkeypatch.context() as m:
        _full_disk_after(m, 2 * n_fields + 5)
        assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "full.h5.partial: cannot write row 2: disk full (ENOSPC)" in err[0], err
    with h5py.File(tmp_path / "full.h5.partial", "r") as f:
        assert f["complete"][:].tolist() == [True, True, False, False, False]
    assert cli.main(argv) == 0
    with h5py.File(shard, "r") as a, h5py.File(out, "r") as b:
        assert dict(a.attrs) == dict(b.attrs)
        assert sorted(a) == sorted(b)
        for name in a:
            ds_a, ds_b = a[name], b[name]
            assert ds_a.dtype == ds_b.dtype and ds_a.shape == ds_b.shape and ds_a.chunks == ds_b.chunks, name
            assert ds_a[()].tobytes() == ds_b[()].tobytes(), name
            if ds_a.chunks is not None:
                for row in range(ds_a.shape[0]):
                    idx = (row,) + (0,) * (ds_a.ndim - 1)
                    assert ds_a.id.read_direct_chunk(idx) == ds_b.id.read_direct_chunk(idx), (name, row)


def test_image_size_above_the_maximum_is_rejected_before_allocating(pipe, tmp_path, capsys):
    out = tmp_path / "o"
    assert cli.main(["generate", "--num", "1", "--out", str(out), "--image-size", str(h5.MAX_IMAGE_SIZE + 1)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--image-size" in err[0] and str(h5.MAX_IMAGE_SIZE) in err[0] and not out.exists()
    cfg = tiny_config_dict(48)
    cfg["image_size"] = 100_000
    with pytest.raises(UserError, match=r"image_size must be in \[8, 2048\]"):  # from a config file, too
        SamplePipeline(config_from_dict(cfg), model=pipe.model, renderer=PaletteRenderer())


def test_a_write_refused_by_the_os_then_the_rerun_resumes_with_identical_rows(tmp_path):
    """A real failed write through HDF5's I/O (no monkeypatching): ``synthforge generate`` runs in a fresh process
    whose file-size limit (RLIMIT_FSIZE: EFBIG, the nearest a test gets to a full disk without a small filesystem)
    is half the finished shard. It exits 2 with one line naming the partial file and row; the partial file is left
    shorter than its superblock says (as after ENOSPC). The rerun without the limit keeps the complete rows (no
    start-over), rebuilds the container around them, and the result's rows and attributes equal an uninterrupted
    run's (stored chunk bytes included)."""
    import resource
    import subprocess

    import yaml

    cfg = tiny_config_dict(48)
    cfg["renderer"] = {"name": "procedural"}
    cfg["model"] = {}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    ref = tmp_path / "ref.h5"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command generates (--threads 1): the bytes are those of a fixed thread count
    try:
        generate_shard(SamplePipeline(config_from_dict(cfg)), str(ref), 10)
    finally:
        torch.set_num_threads(threads)
    limit = ref.stat().st_size // 2
    out = tmp_path / "out.h5"
    argv = [sys.executable, "-m", "synthforge.cli", "generate", "--config", str(tmp_path / "c.yaml"), "--num", "10",
            "--out", str(out), "--workers", "1", "--no-progress"]  # fmt: skip

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    first = subprocess.run(argv, capture_output=True, text=True, preexec_fn=limit_file_size, timeout=300)
    lines = first.stderr.strip().splitlines()
    assert first.returncode == 2 and len(lines) == 1, first.stderr[-2000:]
    assert f"{out}.partial: cannot write row" in lines[0] and "rerun the same command to resume" in lines[0]
    probe = tmp_path / "probe.h5"
    shutil.copyfile(f"{out}.partial", probe)
    with h5._open_partial(probe) as f:
        kept = int(f["complete"][:].sum())
    assert 0 < kept < 10
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0 and second.stderr.strip() == "", second.stderr[-2000:]  # no "starting it over"
    with h5py.File(ref, "r") as a, h5py.File(out, "r") as b:
        assert dict(a.attrs) == dict(b.attrs) and sorted(a) == sorted(b)
        for name in a:
            assert a[name][()].tobytes() == b[name][()].tobytes(), name
            if a[name].chunks is not None:
                for row in range(10):
                    idx = (row,) + (0,) * (a[name].ndim - 1)
                    assert a[name].id.read_direct_chunk(idx) == b[name].id.read_direct_chunk(idx), (name, row)
