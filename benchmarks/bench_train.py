"""Stage-B training throughput: ``synthforge train`` (Lightning) vs a bare PyTorch loop, and the data-pipeline cost.

Both runs use the same config (default ``configs/stage1/demo.yaml``), the same initial weights, the same batches
(pre-loaded into memory, so data loading does not enter either figure), the same loss terms and weights (the
system's own loss functions), the config's precision (bf16 autocast around forward + losses for ``bf16-mixed``, as
Lightning does) and AdamW with the same parameter groups. The Lightning run is the object graph ``synthforge train``
builds (LightningCLI, run=False), with a timing callback; the bare loop calls the network, the loss functions,
backward and the optimiser directly.

Data pipeline, two figures:

* one process, one thread: time to read + crop + augment + collate one batch in the main process with one torch
  thread (the work one DataLoader worker does per batch, in a worker's setting), as a fraction of one bare training
  step;
* end to end: the Lightning run fed by the real DataLoader (the config's ``data.num_workers``) against the same run
  on cached batches; ``1 - rate ratio`` is what reading and augmenting cost training on this machine (workers and
  training threads share the cores).

    python benchmarks/bench_train.py [--config configs/stage1/demo.yaml] [--data DATASET] [--steps 12] [--repeats 6]

Without ``--data`` a toy dataset (``synthforge.data.toy``) at 192 px is written to a temporary folder. Timings are
wall-clock on a shared machine: runs alternate (Lightning, bare, bare, Lightning, ...), each run's rate is 1 / its
median step time, and the best run of each kind is kept.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.data import default_collate

ROOT = Path(__file__).resolve().parents[1]


def build(config: str, data: str, batch: int | None):  # noqa: ANN201 - (system, datamodule, trainer)
    import lightning.pytorch as pl

    from synthforge.commands.train import _build_cli_class
    from synthforge.data.datamodule import SynthDataModule
    from synthforge.system import MultiTaskSystem

    args = [
        "--config", config, f"--data.train={data}", "--data.val=null", "--data.num_workers=0",
        "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.callbacks=[]",
        "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
    ]  # fmt: skip
    if batch:
        args.append(f"--data.batch_size={batch}")
    cli = _build_cli_class()(
        MultiTaskSystem, SynthDataModule, run=False, args=args, parser_kwargs={"exit_on_error": False}
    )
    assert isinstance(cli.trainer, pl.Trainer)
    return cli.model, cli.datamodule, cli.config


class _ListModule(torch.utils.data.Dataset):
    def __init__(self, batches: list[dict]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        return self.batches[i]


def lightning_rate(
    system,
    batches,
    warmup: int,
    precision: str = "32-true",
    steps: int | None = None,  # noqa: ANN001
) -> float:
    """Steps per second of Trainer.fit (steps after ``warmup``) over ``batches``: a list of cached batches, or a
    DataLoader (then ``steps`` bounds the run)."""
    import lightning.pytorch as pl

    times: list[float] = []

    class Timer(pl.Callback):
        def on_train_batch_end(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
            times.append(time.perf_counter())

    if isinstance(batches, list):
        loader = torch.utils.data.DataLoader(_ListModule(batches), batch_size=None, shuffle=False)
        steps = len(batches)
    else:
        loader = batches
    trainer = pl.Trainer(
        accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[Timer()], num_sanity_val_steps=0,
        limit_val_batches=0, precision=precision,
    )  # fmt: skip
    trainer.fit(system, train_dataloaders=loader)
    return _median_rate(times, warmup)


def _median_rate(times: list[float], warmup: int) -> float:
    """1 / median step time after ``warmup`` steps (robust to a load spike on a shared machine)."""
    import statistics

    steps = [b - a for a, b in zip(times[warmup:], times[warmup + 1 :], strict=False)]
    return 1.0 / statistics.median(steps)


def bare_rate(system, batches: list[dict], warmup: int, precision: str = "32-true") -> float:  # noqa: ANN001
    """Steps per second of a plain loop: forward (under bf16 autocast for a bf16-mixed config, as Lightning does),
    the same loss terms and weights (the system's own loss functions), backward, AdamW + schedule step."""
    from synthforge import losses as L
    from synthforge.system import adamw

    net = system.net
    net.train()
    cfg = system.loss_config
    trunk_ids = {id(p) for p in net.trunk.parameters()}
    groups = [
        {"params": [p for p in net.parameters() if id(p) in trunk_ids], "lr": system.trunk_lr},
        {"params": [p for p in net.parameters() if id(p) not in trunk_ids], "lr": system.lr},
    ]
    opt = adamw(groups, weight_decay=system.weight_decay, betas=system.betas)  # the system's own optimiser
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    autocast = precision.startswith("bf16")
    times = []
    for batch in batches:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            out = net(batch["image"])
            loss = system._weighted(system._task_losses(out, batch))
            if cfg.ssl:
                ssl = L.affine_consistency_loss(
                    net.trunk, batch["image"], out.features, cfg.ssl_rotation_deg, cfg.ssl_scale, cfg.ssl_shift
                )
                loss = loss + cfg.ssl * ssl
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        times.append(time.perf_counter())
    return _median_rate(times, warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "stage1" / "demo.yaml"))
    parser.add_argument("--data", default=None, help="dataset (default: a temporary toy set)")
    parser.add_argument("--steps", type=int, default=12, help="timed steps per run (after 2 warm-up steps)")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=6)
    args = parser.parse_args()

    tmp = None
    data = args.data
    if data is None:
        from synthforge.data.toy import write_toy_dataset

        tmp = tempfile.TemporaryDirectory()
        data = str(write_toy_dataset(Path(tmp.name) / "toy.h5", 96, 192, seed=0))

    system, dm, config = build(args.config, data, args.batch_size)
    precision = str(config["trainer"]["precision"] or "32-true")
    ds = dm.train_set
    bs = dm.batch_size
    warmup = 2
    n = warmup + args.steps + 1

    # data pipeline: read + crop + augment + collate in the main process with one torch thread, as in a DataLoader
    # worker (PyTorch sets one thread there); best of three passes over the same samples
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data_per_batch = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        batches = [default_collate([ds[(b * bs + j) % len(ds)] for j in range(bs)]) for b in range(n)]
        data_per_batch = min(data_per_batch, (time.perf_counter() - t0) / n)
    torch.set_num_threads(threads)
    print(f"  data pipeline: {data_per_batch * 1000:.1f} ms per batch of {bs}", flush=True)

    init = copy.deepcopy(system.net.state_dict())
    rates_l, rates_b = [], []
    for r in range(args.repeats):
        order = ("lightning", "bare") if r % 2 == 0 else ("bare", "lightning")  # alternate against load drift
        for kind in order:
            system.net.load_state_dict(init)
            if kind == "lightning":
                rates_l.append(lightning_rate(system, batches, warmup, precision))
            else:
                rates_b.append(bare_rate(system, batches, warmup, precision))
            print(f"  {kind} run: {(rates_l if kind == 'lightning' else rates_b)[-1]:.3f} steps/s", flush=True)
    # end to end: the same Lightning run fed by the real DataLoader (the config's worker count) instead of cached
    # batches; the step-rate difference is what reading + augmenting costs training on this machine
    import yaml

    workers = int((yaml.safe_load(Path(args.config).read_text()).get("data") or {}).get("num_workers", 0))
    dm.num_workers = workers
    rates_p = []
    for _ in range(max(args.repeats - 1, 1)):
        system.net.load_state_dict(init)
        rates_p.append(lightning_rate(system, dm.train_dataloader(), warmup + 3, precision, steps=n + 3))
        print(f"  lightning run, real DataLoader ({workers} workers): {rates_p[-1]:.3f} steps/s", flush=True)
    rl, rb, rp = max(rates_l), max(rates_b), max(rates_p)

    def runs(rates: list[float]) -> str:
        return ", ".join(f"{r:.3f}" for r in rates)

    print(f"config: {args.config}  batch: {bs}  crop: {dm.crop_size}  precision: {precision}  threads: {threads}")
    print(f"lightning (synthforge train) steps/s: {rl:.3f}   runs: {runs(rates_l)}")
    print(f"bare PyTorch loop steps/s:            {rb:.3f}   runs: {runs(rates_b)}")
    print(f"RATIO lightning / bare step rate (best runs): {rl / rb:.3f}   (target >= 0.9)")
    print(f"data pipeline (read + augment + collate) per batch: {data_per_batch * 1000:.1f} ms")
    print(f"bare training step: {1000 / rb:.1f} ms")
    print(f"DATA FRACTION of a training step: {data_per_batch * rb:.3f}   (target < 0.10; one process, one thread)")
    print(f"lightning with the real DataLoader steps/s: {rp:.3f}   runs: {runs(rates_p)}")
    print(f"END-TO-END DATA COST (1 - real loader / cached batches step rate, best runs): {1 - rp / rl:.3f}")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
