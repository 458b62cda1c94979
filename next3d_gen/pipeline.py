"""One labeled sample from a config and an index: sample -> pose -> camera -> labels -> image -> schema arrays.

Each sample is produced alone (FLAME batch 1, one rasterization, one render) from its own generator, so its bytes
depend only on ``(config, index)``, never on which shard, process or neighbour produced it. (A batched FLAME or
rasterizer call can round differently per batch size, which would break that; the FLAME forward pass is cheap next
to rasterization and rendering, so there is nothing to gain.)
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing
from typing import Any

import numpy as np
import torch

from next3d_gen import h5
from next3d_gen.errors import UserError
from next3d_gen.flame import FlameLayer, FlameModel
from next3d_gen.labels import SYNTH, LabelSpace
from next3d_gen.render.base import NO_OVERRIDE, Renderer, RenderOutput, Scene
from next3d_gen.sampling import GenerateConfig, ModelConfig, SampleParams, sample_params, sample_params_from_seed

log = logging.getLogger(__name__)

Labeler = Callable[..., tuple[Any, Any]]


def load_head_model(config: ModelConfig) -> FlameModel:
    """The head model of a config: the built-in head when ``path`` is None, else the user's FLAME files.

    Raises:
        UserError: a configured path that does not exist.
    """
    from pathlib import Path

    if config.path is None:
        from next3d_gen.head_model import builtin_head_model

        return builtin_head_model()
    path = Path(config.path).expanduser()
    if not path.is_file():
        raise UserError(f"model.path: FLAME model file not found: {path}")
    emb = config.landmark_embedding
    if emb is not None and not Path(emb).expanduser().is_file():
        raise UserError(f"model.landmark_embedding: file not found: {emb}")
    from next3d_gen.flame import load_flame_model

    return load_flame_model(str(path), None if emb is None else str(Path(emb).expanduser()))


def check_image_size(size: int, option: str) -> None:
    """UserError naming ``option`` unless ``8 <= size <= h5.MAX_IMAGE_SIZE`` (checked before any allocation)."""
    if not 8 <= int(size) <= h5.MAX_IMAGE_SIZE:
        raise UserError(f"{option} must be in [8, {h5.MAX_IMAGE_SIZE}] pixels, got {size}")


class SamplePipeline:
    """Generates schema-ready samples.

    Args:
        config: generation config.
        model: head model (default: :func:`load_head_model` of ``config.model``).
        renderer: image renderer (default: built from ``config.renderer`` via the registry).
        labeler: ``render_labels``-compatible function, called with the ``contour`` keyword (default
            :func:`next3d_gen.annotate.render_labels`).

    Attributes:
        num_shape, num_expression: coefficient columns drawn and stored (configured counts clipped to the model).
        shapes: per-sample shape of every schema field (for :class:`next3d_gen.h5.ShardWriter`).
        label_space: the label space of ``seg``.
    """

    def __init__(
        self,
        config: GenerateConfig,
        model: FlameModel | None = None,
        renderer: Renderer | None = None,
        labeler: Labeler | None = None,
    ) -> None:
        self.config = config
        check_image_size(config.image_size, "image_size")
        self.model = load_head_model(config.model) if model is None else model
        self.layer = FlameLayer(self.model)
        if renderer is None:
            from next3d_gen.render import build_renderer

            renderer = build_renderer(config.renderer.name, config.renderer.options(), self.model)
        self.renderer = renderer
        if labeler is None:
            from next3d_gen.annotate import render_labels

            labeler = render_labels
        self.labeler = labeler
        self.num_shape = min(config.shape.count, self.model.num_shape)
        self.num_expression = min(config.expression.count, self.model.num_expression)
        for what, want, have in (
            ("shape", config.shape.count, self.model.num_shape),
            ("expression", config.expression.count, self.model.num_expression),
        ):
            if want > have:
                log.info("%s.count = %d but the model has %d columns; drawing %d", what, want, have, have)
        self.label_space: LabelSpace = SYNTH
        size = config.image_size
        self.shapes = h5.sample_shapes(size, size, self.num_shape, self.num_expression, int(renderer.latent_dim))

    def params(self, index: int) -> SampleParams:
        """Sampled parameters of sample ``index``."""
        return sample_params(self.config, self.config.seed, index, self.num_shape, self.num_expression)

    def generate(self, index: int) -> dict[str, np.ndarray]:
        """Sample ``index`` of the dataset as ``{field: array}`` with the schema's dtypes and per-sample shapes."""
        return self.generate_from_params(self.params(index))

    def generate_from_seed(self, seed_of_sample: int) -> dict[str, np.ndarray]:
        """The sample whose stored ``sample_seed`` is ``seed_of_sample`` (regenerates one sample alone)."""
        p = sample_params_from_seed(self.config, seed_of_sample, self.num_shape, self.num_expression)
        return self.generate_from_params(p)

    def _pose_and_label(self, p: SampleParams) -> tuple[torch.Tensor, torch.Tensor, Any, Any]:
        """Posed (1, V, 3) vertices and (1, 68, 3) layer landmarks (world), fragments and annotations of ``p``.

        The vertices and landmarks returned are the head model's output (what the renderer draws); the labels are
        made on the mesh moved by the renderer's ``label_transform`` when it has one.
        """
        size = self.config.image_size
        out = self.layer(shape=p.shape[None], expression=p.expression[None], pose=p.pose[None])
        vertices, landmarks = out.vertices, out.landmarks
        label_vertices, label_landmarks = vertices, landmarks
        transform = getattr(self.renderer, "label_transform", None)
        if transform is not None:  # e.g. Next3D's alignment: label the mesh where the image puts the face
            label_vertices, label_landmarks = transform(vertices), transform(landmarks)
        K = p.K.to(vertices)
        cam2world = p.cam2world.to(vertices)
        contour = self.config.model.contour_mode()
        faces = self.layer.faces
        fragments, ann = self.labeler(
            label_vertices, faces, K[None], cam2world[None], size, size, label_landmarks, self.model, contour=contour
        )
        return vertices, landmarks, fragments, ann

    @torch.no_grad()
    def label_view(self, p: SampleParams) -> tuple[Any, Any]:
        """Pose and label one sample of parameters ``p`` without rendering its image: ``(fragments, annotations)``."""
        return self._pose_and_label(p)[2:]

    @torch.no_grad()
    def generate_from_params(self, p: SampleParams) -> dict[str, np.ndarray]:
        """Pose, label and render one sample of parameters ``p`` (its generator feeds the renderer)."""
        size = self.config.image_size
        vertices, landmarks, fragments, ann = self._pose_and_label(p)
        K = p.K.to(vertices)
        cam2world = p.cam2world.to(vertices)
        scene = Scene(
            vertices_world=vertices[0],
            landmarks_world=landmarks[0],
            faces=self.layer.faces,
            K=K,
            cam2world=cam2world,
            height=size,
            width=size,
            fragments=fragments,
            annotations=ann,
            model=self.model,
            params=p.as_dict(),
        )
        rendered = self.renderer.render(scene, p.generator)
        return self.to_record(p, ann, rendered)

    def to_record(self, p: SampleParams, ann: Any, rendered: RenderOutput) -> dict[str, np.ndarray]:
        """Apply the renderer's occluders, label layers and depth to the labels and cast everything to the schema.

        Order (see :class:`~next3d_gen.render.base.RenderOutput`): ``occluder_mask`` pixels lose the head geometry
        (seg background, depth 0, normal 0, uv -1, landmarks under them not visible, bbox from the rest), then
        ``label_override`` sets seg wherever it is not 255 (hair, beard, eyeglasses, background), on head and background
        pixels alike.

        Raises:
            ValueError: the renderer returned an override class outside :attr:`label_space`.
        """
        size = self.config.image_size
        seg = ann.seg[0].cpu().numpy().astype(np.uint8)
        mask = ann.mask[0].cpu().numpy().astype(bool)
        depth = ann.depth[0].cpu().numpy().astype(np.float32)
        normal = ann.normal[0].cpu().numpy().astype(np.float32)
        uv = ann.uv[0].cpu().numpy().astype(np.float32)
        lmk2 = ann.landmarks_2d[0].cpu().numpy().astype(np.float32)
        visible = ann.landmarks_visible[0].cpu().numpy().astype(bool)
        bbox = ann.bbox[0].cpu().numpy().astype(np.float32)

        if rendered.depth is not None:
            depth = np.where(mask, rendered.depth.detach().cpu().numpy().astype(np.float32), 0.0)
        if rendered.occluder_mask is not None:
            occ = rendered.occluder_mask.detach().cpu().numpy().astype(bool)
            if occ.any():
                seg[occ] = self.label_space.background
                mask = mask & ~occ
                depth[occ] = 0.0
                normal[occ] = 0.0
                uv[occ] = -1.0
                col = np.rint(lmk2[:, 0]).astype(np.int64)
                row = np.rint(lmk2[:, 1]).astype(np.int64)
                inside = (col >= 0) & (col < size) & (row >= 0) & (row < size)
                under = np.zeros_like(visible)
                under[inside] = occ[row[inside], col[inside]]
                visible = visible & ~under
                bbox = _mask_bbox(mask)
        if rendered.label_override is not None:
            override = rendered.label_override.detach().cpu().numpy()
            if override.shape != seg.shape:
                raise ValueError(f"renderer returned label_override {override.shape}, expected {seg.shape}")
            drawn = override != NO_OVERRIDE
            if drawn.any() and int(override[drawn].max()) >= self.label_space.num_classes:
                raise ValueError(f"renderer returned label_override ids beyond the {self.label_space.name} space")
            seg[drawn] = override[drawn]

        image = rendered.image.detach().cpu().numpy()
        if image.dtype != np.uint8 or image.shape != (size, size, 3):
            raise ValueError(f"renderer returned image {image.dtype} {image.shape}, expected uint8 ({size}, {size}, 3)")
        latent = rendered.latent.detach().cpu().numpy().astype(np.float32).reshape(-1)
        return {
            "image": image,
            "seg": seg,
            "depth": depth.astype(np.float16),
            "normal": np.clip(np.rint(normal * h5.NORMAL_SCALE), -127, 127).astype(np.int8),
            "uv": uv.astype(np.float16),
            "landmarks_2d": lmk2,
            "landmarks_3d": ann.landmarks_3d[0].cpu().numpy().astype(np.float32),
            "landmarks_visible": visible,
            "bbox": bbox,
            "camera_K": p.K.numpy().astype(np.float32),
            "camera_cam2world": p.cam2world.numpy().astype(np.float32),
            "flame_shape": p.shape.numpy().astype(np.float32),
            "flame_expression": p.expression.numpy().astype(np.float32),
            "flame_pose": p.pose.numpy().astype(np.float32),
            "latent": latent,
            "sample_seed": np.int64(p.sample_seed),
        }


def _mask_bbox(mask: np.ndarray) -> np.ndarray:
    """(4,) float32 x0, y0, x1, y1 of a (H, W) bool mask, pixel-edge convention; zeros when empty."""
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    if len(rows) == 0:
        return np.zeros(4, dtype=np.float32)
    return np.array([cols[0] - 0.5, rows[0] - 0.5, cols[-1] + 0.5, rows[-1] + 0.5], dtype=np.float32)


def generator_config(config: GenerateConfig, num_samples: int, num_shards: int) -> dict[str, Any]:
    """The complete description stored in every shard: re-running it reproduces the shard."""
    return {"config": config.to_dict(), "num_samples": int(num_samples), "num_shards": int(num_shards)}


_WORKER_PIPELINE: SamplePipeline | None = None


def _init_worker(config: GenerateConfig) -> None:
    global _WORKER_PIPELINE
    torch.set_num_threads(1)
    _WORKER_PIPELINE = SamplePipeline(config)


def _generate_in_worker(index: int) -> dict[str, np.ndarray]:
    assert _WORKER_PIPELINE is not None
    return _WORKER_PIPELINE.generate(index)


def iter_samples(pipeline: SamplePipeline, indices: Sequence[int], workers: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Samples ``indices`` of ``pipeline``'s dataset, in that order, as :meth:`SamplePipeline.generate` records.

    Args:
        pipeline: the sample pipeline.
        indices: sample indices.
        workers: processes that generate them (each with one torch thread, each rebuilding the pipeline from
            ``pipeline.config``); 1 = this process. The records are the same bytes for any value.
    """
    if workers > 1 and len(indices) > 1:
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")  # no fork of a process whose thread pools are running
        with ctx.Pool(min(workers, len(indices)), _init_worker, (pipeline.config,)) as pool:
            yield from pool.imap(_generate_in_worker, [int(i) for i in indices], chunksize=2)
    else:
        for i in indices:
            yield pipeline.generate(int(i))


def generate_shard(
    pipeline: SamplePipeline,
    out: str,
    num_samples: int,
    num_shards: int = 1,
    shard_index: int = 0,
    progress: Callable[[int], None] | None = None,
    on_start: Callable[[int], None] | None = None,
    workers: int = 1,
    sample_indices: Sequence[int] | None = None,
    extra_fields: dict[str, np.ndarray] | None = None,
    config_extra: dict[str, Any] | None = None,
) -> h5.ShardWriter:
    """Generate (or resume) one shard of a dataset of ``num_samples`` samples.

    Args:
        pipeline: the sample pipeline.
        out: a folder (shards ``shard-IIIII-of-KKKKK.h5`` + ``index.json`` once all exist) or, with one shard,
            a file path ending in ``.h5``.
        num_samples: total samples of the dataset (all shards).
        num_shards, shard_index: which contiguous range of sample indices this call writes.
        progress: called with the number of rows just written (for a progress bar).
        on_start: called once, before generating, with the number of rows already complete (resumed run).
        workers: processes that generate samples (each with one torch thread, each rebuilding the pipeline from
            ``pipeline.config``); this process writes them in order. Samples are the same bytes for any value.
        sample_indices: dataset row ``i`` holds sample ``sample_indices[i]`` of the config's seed (default ``i``);
            ``num_samples`` long (e.g. the candidates chosen by ``synthforge.guide``).
        extra_fields: optional schema fields (:data:`next3d_gen.h5.OPTIONAL_FIELDS`) stored beside the samples:
            name -> array of ``num_samples`` rows (row ``i`` goes to dataset row ``i``).
        config_extra: entries added to the stored generator config (what else determines the rows).

    Returns:
        The (finalized) writer.
    """
    from pathlib import Path

    if num_samples < 0:
        raise UserError(f"--num must be >= 0, got {num_samples}")
    if num_shards < 1 or not 0 <= shard_index < num_shards:
        raise UserError(f"--shard-index must be in [0, {num_shards}), got {shard_index}")
    outp = Path(out)
    if outp.suffix == ".h5":
        if num_shards != 1:
            raise UserError(f"--out {out}: a single .h5 file cannot hold {num_shards} shards; give a folder")
        path = outp
    else:
        path = outp / h5.shard_filename(shard_index, num_shards)
    start, stop = h5.shard_range(num_samples, num_shards, shard_index)
    extra = dict(extra_fields or {})
    for name, rows in (("sample_indices", sample_indices), *extra.items()):
        if rows is not None and len(rows) != num_samples:
            raise ValueError(f"{name} has {len(rows)} rows for {num_samples} samples")
    index_of = (lambda i: i) if sample_indices is None else (lambda i: int(sample_indices[i]))
    cfg = pipeline.config
    attrs = h5.make_attrs(
        pipeline.label_space.to_json(),
        {**generator_config(cfg, num_samples, num_shards), **(config_extra or {})},
        cfg.image_size,
        depth_kind="metric",
        shard_index=shard_index,
        num_shards=num_shards,
        sample_start=start,
        renderer=str(getattr(pipeline.renderer, "name", cfg.renderer.name)),
        head_model=str(pipeline.model.name),
    )
    if outp.suffix != ".h5" and outp.is_dir():
        h5.check_folder_config(outp, str(attrs[h5.ATTR_GENERATOR_CONFIG]))
    st = cfg.storage
    writer = h5.ShardWriter(
        path,
        stop - start,
        {**pipeline.shapes, **{name: rows.shape[1:] for name, rows in extra.items()}},
        attrs,
        fields=[*(f.name for f in h5.FIELDS), *extra] if extra else None,
        compression=st.filter("compression"),
        image_compression=st.filter("image_compression"),
        compression_level=st.compression_level,
    )
    try:
        pending = writer.pending_rows()
        if on_start is not None:
            on_start(stop - start - len(pending))
        # closing(): a failed write stops the worker processes at once
        with closing(iter_samples(pipeline, [index_of(start + row) for row in pending], workers)) as samples:
            for row, sample in zip(pending, samples, strict=True):
                writer.write(row, {**sample, **{name: rows[start + row] for name, rows in extra.items()}})
                if progress is not None:
                    progress(1)
        writer.finalize()
    finally:
        writer.close()
    if outp.suffix != ".h5":
        h5.write_index(outp, num_shards)
    return writer
