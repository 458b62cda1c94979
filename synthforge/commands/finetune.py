"""``synthforge finetune``: stage C label fine-tuning (LightningCLI ``fit`` of FinetuneSystem on a benchmark).

Example::

    synthforge finetune --config configs/finetune/lapa.yaml --data.root /data/LaPa --model.backbone stage1.ckpt

``--data.dataset`` and ``--data.resolution`` are passed on to the model (``model.dataset``, ``model.resolution``).
The best checkpoint path is printed at the end (use it as ``synthforge evaluate --ckpt``); ``--ckpt_path`` resumes
an interrupted run. The fine-tune checkpoint holds the frozen stage-I network and its config, so evaluation does not
need the stage-I file any more.
"""

from __future__ import annotations

import warnings

from lightning.pytorch.cli import LightningCLI

from label_finetune.datasets.datamodule import FinetuneDataModule
from label_finetune.system import FinetuneSystem
from synthforge.checkpoints import FINETUNE, load_checkpoint
from synthforge.commands.train import instantiate_cli


class FinetuneCLI(LightningCLI):
    """LightningCLI with the data -> model links of stage C."""

    def add_arguments_to_parser(self, parser) -> None:  # type: ignore[no-untyped-def]
        parser.add_argument("--ckpt_path", type=str | None, default=None, help="fine-tune checkpoint to resume from")
        parser.link_arguments("data.dataset", "model.dataset")
        parser.link_arguments("data.resolution", "model.resolution")

    def before_instantiate_classes(self) -> None:
        data = self.config["data"]  # counts and the root's layout are checked before the stage-I network is loaded
        FinetuneDataModule.check_options(
            data.dataset, data.root, data.resolution, data.batch_size, data.val_batch_size, data.num_workers
        )
        resume = self.config.get("ckpt_path")
        if resume:  # read safely and check the kind before the stage-I network or the Trainer is built
            load_checkpoint(resume, "--ckpt_path", expect=FINETUNE)

    def instantiate_trainer(self, **kwargs):  # type: ignore[no-untyped-def] # noqa: ANN003, ANN202 - Lightning's
        # every file and annotation of the training and validation splits is checked before Lightning prints
        self.datamodule.setup_fit()
        return super().instantiate_trainer(**kwargs)


def main(argv: list[str]) -> int:
    # expected here: the frozen stage-I network is in eval mode, and argv comes from the synthforge dispatcher
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
    cli = instantiate_cli(
        FinetuneCLI, FinetuneSystem, FinetuneDataModule, argv, "synthforge finetune", seed_everything_default=0
    )
    if cli is None:
        return 0
    resume = cli.config.get("ckpt_path")
    cli.trainer.fit(cli.model, cli.datamodule, ckpt_path=resume, weights_only=True)
    ckpt = cli.trainer.checkpoint_callback
    best = getattr(ckpt, "best_model_path", "") or getattr(ckpt, "last_model_path", "")
    if best:
        print(f"checkpoint: {best}")
    return 0
