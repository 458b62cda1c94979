"""Loss-guided generation (``synthforge generate --guide``): selection rule, scores, determinism, resume, CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from next3d_gen import h5
from next3d_gen.errors import UserError
from next3d_gen.pipeline import SamplePipeline
from next3d_gen.sampling import config_from_dict, sample_seed
from synthforge import guide
from synthforge.cli import main as cli_main
from synthforge.data.dataset import SynthFaceDataset
from synthforge.guide import GuideOptions, LossScorer, generate_guided, select_candidates, selection_path

sys.path.insert(0, str(Path(__file__).parent))
from gen_fixtures import PaletteRenderer, tiny_config_dict, tiny_head_model  # noqa: E402
from test_generation import assert_same_samples, read_all  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ROOT / "configs" / "stage1" / "tiny.yaml"
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------ selection rule


def _reference_hardest(scores: list[float], k: int) -> set[int]:
    """Independent statement of the rule: highest scores first, non-finite last, ties to the lower index."""
    rank = sorted(range(len(scores)), key=lambda j: (-(scores[j] if np.isfinite(scores[j]) else -np.inf), j))
    return set(rank[:k])


def test_select_candidates_hand_example() -> None:
    #          0    1    2       3    4    5    6    7
    scores = [0.5, 2.0, np.nan, 1.0, 2.0, 0.1, 3.0, 0.7]
    sel = select_candidates(np.array(scores), num=4, uniform_fraction=0.5, seed=7)
    # 2 hardest: 6 (3.0), then the tie 1 / 4 at 2.0 goes to the lower index 1; NaN (2) is never among the hardest
    assert set(sel.indices[sel.hard].tolist()) == {1, 6} == _reference_hardest(scores, 2)
    uniform = sel.indices[~sel.hard]
    assert len(uniform) == 2 and set(uniform.tolist()) <= {0, 2, 3, 4, 5, 7}
    assert list(sel.indices) == sorted(sel.indices) and len(set(sel.indices.tolist())) == 4
    assert np.isnan(sel.scores[2]) and sel.scores.dtype == np.float32
    np.testing.assert_array_equal(sel.row_scores, np.float32(scores)[sel.indices])
    again = select_candidates(np.array(scores), num=4, uniform_fraction=0.5, seed=7)
    assert again.digest() == sel.digest()
    # the uniform draw follows the seed (over several seeds it reaches more than two of the six others)
    seen = set()
    for seed in range(8):
        s = select_candidates(np.array(scores), 4, 0.5, seed)
        assert set(s.indices[s.hard].tolist()) == {1, 6}
        seen |= set(s.indices[~s.hard].tolist())
    assert len(seen) > 2
    # no uniform rows: exactly the 3 hardest; all uniform: no hard row; the whole pool: everything
    top3 = select_candidates(np.array(scores), 3, 0.0, 0)
    assert set(top3.indices.tolist()) == {1, 4, 6} == _reference_hardest(scores, 3) and top3.hard.all()
    assert not select_candidates(np.array(scores), 3, 1.0, 0).hard.any()
    assert select_candidates(np.array(scores), 8, 0.25, 0).indices.tolist() == list(range(8))
    # round(5 * 0.5) = 2 uniform rows (Python rounding), 3 hard
    assert int(select_candidates(np.array(scores), 5, 0.5, 0).hard.sum()) == 3


def test_select_candidates_random_against_reference() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        pool = int(rng.integers(1, 40))
        scores = np.round(rng.normal(size=pool), 1)  # rounded: ties happen
        special = rng.random(pool) < 0.15
        scores[special] = rng.choice([np.nan, np.inf, -np.inf], size=int(special.sum()))
        num = int(rng.integers(0, pool + 1))
        frac = float(rng.choice([0.0, 0.3, 0.5, 1.0]))
        sel = select_candidates(scores, num, frac, int(rng.integers(100)))
        n_hard = num - round(num * frac)
        assert set(sel.indices[sel.hard].tolist()) == _reference_hardest(scores.tolist(), n_hard)
        assert len(sel.indices) == num and int(sel.hard.sum()) == n_hard


# ------------------------------------------------------------------------------------------------ scoring + writing


@pytest.fixture(scope="module")
def model():  # noqa: ANN201 - FlameModel
    return tiny_head_model()


def _pipeline(model, seed: int = 3) -> SamplePipeline:  # noqa: ANN001
    cfg = {**tiny_config_dict(48), "seed": seed}
    return SamplePipeline(config_from_dict(cfg), model=model, renderer=PaletteRenderer())


@pytest.fixture(scope="module")
def ckpt(model, tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: ANN001
    """A stage-I checkpoint of configs/stage1/tiny.yaml trained for 2 steps on 6 generated tiny samples."""
    from next3d_gen.pipeline import generate_shard

    d = tmp_path_factory.mktemp("guide_ckpt")
    generate_shard(_pipeline(model, seed=50), str(d / "train.h5"), 6)
    argv = [
        "train",
        "--config",
        str(TINY_TRAIN),
        f"--data.train={d / 'train.h5'}",
        f"--trainer.default_root_dir={d}",
        "--trainer.max_steps=2",
    ]
    assert cli_main(argv) == 0
    return d / "lightning_logs" / "version_0" / "checkpoints" / "final.ckpt"


def test_item_is_the_training_datasets_validation_crop(ckpt: Path, model, tmp_path: Path) -> None:  # noqa: ANN001
    from next3d_gen.pipeline import generate_shard

    pipe = _pipeline(model)
    generate_shard(pipe, str(tmp_path / "u.h5"), 3)
    scorer = LossScorer(ckpt)
    ds = SynthFaceDataset(tmp_path / "u.h5", crop_size=scorer.crop_size, crop_scale=scorer.crop_scale)
    for i, record in enumerate(read_all(tmp_path / "u.h5")):
        item, ref = scorer.item(record), ds[i]
        for key, value in item.items():
            assert value.dtype == ref[key].dtype and torch.equal(value, ref[key]), (i, key)


def test_written_scores_are_the_checkpoints_training_loss(ckpt: Path, model, tmp_path: Path) -> None:  # noqa: ANN001
    out = tmp_path / "g.h5"
    pipe = _pipeline(model)
    generate_guided(pipe, out, 4, GuideOptions(ckpt, pool=9, uniform_fraction=0.5))
    sel = json.loads(selection_path(out).read_text())
    rows = read_all(out)
    assert [int(r["sample_seed"]) for r in rows] == [sample_seed(3, j) for j in sel["indices"]]
    # the hardest rows beat every candidate left out
    scores = np.array([np.nan if v is None else v for v in sel["scores"]], dtype=np.float32)
    hard = [j for j, h in zip(sel["indices"], sel["hard"], strict=True) if h]
    left_out = sorted(set(range(9)) - set(sel["indices"]))
    assert len(hard) == 2 and scores[hard].min() >= scores[left_out].max()
    # each row's guide_score = the training loss terms of the checkpoint on that row read back for training
    scorer = LossScorer(ckpt)
    system = scorer.system
    ds = SynthFaceDataset(out, crop_size=scorer.crop_size, crop_scale=scorer.crop_scale)
    for i, row in enumerate(rows):
        batch = {k: v[None] for k, v in ds[i].items()}
        with torch.no_grad():
            loss = system._weighted(system._task_losses(system.net(batch["image"]), batch))
        assert float(row[guide.SCORE_FIELD]) == pytest.approx(float(loss), rel=1e-4, abs=1e-5)
    attrs = json.loads(h5.SampleReader(out).attrs[h5.ATTR_GENERATOR_CONFIG])
    assert attrs["guide"]["pool"] == 9 and attrs["guide"]["num_hard"] == 2


class _Stop(Exception):
    pass


def test_guided_generation_is_deterministic_and_resumes_to_the_same_rows(
    ckpt: Path,
    model,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,  # noqa: ANN001
) -> None:
    options = GuideOptions(ckpt, pool=10, uniform_fraction=0.4)
    ref = tmp_path / "ref"
    generate_guided(_pipeline(model), ref, 5, options, num_shards=2, shard_index=1)
    generate_guided(_pipeline(model), ref, 5, options, num_shards=2, shard_index=0)
    # an interrupted run in another folder (scored afresh), killed after 2 rows
    out = tmp_path / "run.h5"
    written = []

    def stop_after_two(n: int) -> None:
        written.append(n)
        if len(written) == 2:
            raise _Stop

    with pytest.raises(_Stop):
        generate_guided(_pipeline(model), out, 5, options, progress=stop_after_two)
    assert (tmp_path / "run.h5.partial").exists() and selection_path(out).exists()
    # the rerun reuses the saved selection (no scoring) and writes the missing rows
    monkeypatch.setattr(guide, "score_pool", lambda *a, **k: pytest.fail("the selection was scored again"))
    resumed = []
    generate_guided(_pipeline(model), out, 5, options, on_start=resumed.append)
    assert resumed == [2]
    assert_same_samples(read_all(ref), read_all(out))
    # other settings on the same output are refused, naming the selection file
    with pytest.raises(UserError, match="guide.json holds a selection made with other settings"):
        generate_guided(_pipeline(model), out, 5, GuideOptions(ckpt, pool=10, uniform_fraction=0.6))
    # scoring again (selection file deleted) reproduces the same selection: the finished file is accepted as is
    monkeypatch.undo()
    selection_path(out).unlink()
    generate_guided(_pipeline(model), out, 5, options)
    assert_same_samples(read_all(ref), read_all(out))


def test_reader_returns_the_fields_every_file_has(ckpt: Path, model, tmp_path: Path) -> None:  # noqa: ANN001
    from next3d_gen.pipeline import generate_shard

    folder = tmp_path / "mixed"
    generate_shard(_pipeline(model, seed=1), str(folder / "a.h5"), 2)
    generate_guided(_pipeline(model, seed=2), folder / "b.h5", 2, GuideOptions(ckpt, pool=3))
    assert guide.SCORE_FIELD in h5.SampleReader(folder / "b.h5").fields
    with h5.SampleReader(folder) as r:
        assert len(r) == 4 and guide.SCORE_FIELD not in r.fields and "image" in r.fields
        r[3]
    with pytest.raises(UserError, match=r"a\.h5: no field\(s\) \['guide_score'\]"):
        h5.SampleReader(folder, fields=["image", guide.SCORE_FIELD])


# ------------------------------------------------------------------------------------------------ command


def test_generate_guide_command_in_a_fresh_process(ckpt: Path, tmp_path: Path) -> None:
    base = [
        sys.executable,
        "-m",
        "synthforge.cli",
        "generate",
        "--config",
        str(ROOT / "configs/generate/tiny.yaml"),
        "--image-size",
        "48",
        "--no-progress",
        "--workers",
        "1",
        "--guide",
        str(ckpt),
    ]
    out = tmp_path / "guided"
    r = subprocess.run(
        [*base, "--num", "3", "--pool", "6", "--guide-uniform", "0.34", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    with h5.SampleReader(out) as reader:
        assert len(reader) == 3 and guide.SCORE_FIELD in reader.fields
        assert np.isfinite([float(reader[i][guide.SCORE_FIELD]) for i in range(3)]).all()
        assert json.loads(reader.attrs[h5.ATTR_GENERATOR_CONFIG])["guide"]["num_hard"] == 2
    assert (out / "guide-selection.json").is_file()
    bad = subprocess.run(
        [*base, "--num", "3", "--pool", "2", "--out", str(tmp_path / "bad")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.strip().splitlines() == [
        "synthforge generate: error: --pool must be >= --num (3), got 2"
    ]


# ------------------------------------------------------------------------------------------------ rounds


def test_rounds_alternate_training_and_guided_generation_and_resume(tmp_path: Path) -> None:
    from synthforge.rounds import load_recipe, round_data, run_rounds

    recipe_path = tmp_path / "recipe.yaml"
    recipe_path.write_text(
        f"train_config: {TINY_TRAIN}\ngenerate_config: {ROOT / 'configs/generate/tiny.yaml'}\nimage_size: 48\n"
        "seed: 5\nuniform_fraction: 0.34\nrounds:\n  - {num: 6, steps: 2}\n  - {num: 3, pool: 6, steps: 2}\n"
    )
    recipe = load_recipe(recipe_path)
    out = tmp_path / "run"
    ckpts = run_rounds(recipe, out, show_progress=False, log=lambda _: None)
    final = torch.load(ckpts[1], map_location="cpu", weights_only=True)
    assert final["global_step"] == 4  # continued round 0's run (AdamW counted all 4 steps)
    assert float(next(iter(final["optimizer_states"][0]["state"].values()))["step"]) == 4.0
    assert final["hyper_parameters"]["schedule_steps"] == 4
    with h5.SampleReader(round_data(out, 0)) as r0, h5.SampleReader(round_data(out, 1)) as r1:
        assert len(r0) == 6 and guide.SCORE_FIELD not in r0.fields
        assert len(r1) == 3 and guide.SCORE_FIELD in r1.fields
        seeds = json.loads(r1.attrs[h5.ATTR_GENERATOR_CONFIG])
        assert seeds["config"]["seed"] == 6 and seeds["guide"]["num_hard"] == 2
    index = json.loads((out / "data" / "train-01.json").read_text())
    assert [s["file"] for s in index["shards"]] == ["round-00.h5", "round-01.h5"]
    assert json.loads((out / "rounds.json").read_text())["rounds"][1]["checkpoint"] == str(ckpts[1])
    # a rerun keeps everything: same checkpoints, no new training run, data untouched
    stamp = round_data(out, 1).stat().st_mtime_ns
    assert run_rounds(recipe, out, show_progress=False, log=lambda _: None) == ckpts
    assert round_data(out, 1).stat().st_mtime_ns == stamp
    assert len(list((out / "train" / "round-01" / "lightning_logs").iterdir())) == 1
    shipped = load_recipe(ROOT / "configs" / "stage1" / "guided_rounds.yaml")
    assert shipped.train_config.name == "demo.yaml" and shipped.rounds[0].pool is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("rounds:\n  - {num: 4, pool: 8, steps: 2}\n", r"rounds\[0\]\.pool: round 0 has no network"),
        (
            "rounds:\n  - {num: 4, steps: 2}\n  - {num: 4, pool: 3, steps: 2}\n",
            r"rounds\[1\]\.pool must be an integer >= 4",
        ),
        ("rounds: []\n", "'rounds' must be a non-empty list"),
        ("rounds:\n  - {num: 4, steps: 2}\nseeds: 3\n", r"unknown key\(s\) \['seeds'\]"),
    ],
)
def test_bad_recipe_is_one_line_naming_the_key(tmp_path: Path, text: str, needle: str) -> None:
    from synthforge.rounds import load_recipe

    path = tmp_path / "r.yaml"
    path.write_text(f"train_config: {TINY_TRAIN}\ngenerate_config: {ROOT / 'configs/generate/tiny.yaml'}\n{text}")
    with pytest.raises(UserError, match=needle):
        load_recipe(path)
