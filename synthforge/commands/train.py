"""``synthforge train --config configs/stage1/<name>.yaml [--dotted.key value ...] [--ckpt_path CKPT]``.

LightningCLI (``fit``) over :class:`~synthforge.system.MultiTaskSystem` and
:class:`~synthforge.data.datamodule.SynthDataModule`. Config sections: ``trainer``, ``model`` (with ``model.net``
as class_path / init_args), ``data``, ``seed_everything``, ``ckpt_path`` (resume). When ``trainer.logger`` is not
set, a CSV logger is used, plus TensorBoard when it is installed. Parser errors (unknown key, bad value, missing
file) become a one-line :class:`UserError` (exit status 2).
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import warnings
from argparse import ArgumentError

from next3d_gen.errors import UserError
from synthforge.commands import one_line

LOG_ROOT = "runs/stage1"


def _build_cli_class():  # noqa: ANN202 - returns a LightningCLI subclass (imported lazily)
    from jsonargparse import Namespace
    from lightning.pytorch.cli import LightningCLI

    class TrainCLI(LightningCLI):
        def add_arguments_to_parser(self, parser) -> None:  # noqa: ANN001 - jsonargparse parser
            parser.add_argument("--ckpt_path", type=str | None, default=None, help="checkpoint to resume from")

        def before_instantiate_classes(self) -> None:
            cfg = self.config
            trainer = cfg["trainer"]
            if trainer.get("logger") in (None, True):
                root = trainer.get("default_root_dir") or LOG_ROOT
                loggers = [{"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": root}}]
                if importlib.util.find_spec("tensorboard") is not None:
                    loggers.append(
                        {
                            "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                            "init_args": {"save_dir": root, "name": "tensorboard", "default_hp_metric": False},
                        }
                    )
                cfg["trainer"]["logger"] = [
                    Namespace(class_path=lg["class_path"], init_args=Namespace(**lg["init_args"])) for lg in loggers
                ]
            ckpt = cfg.get("ckpt_path")
            if ckpt:  # read safely and check the kind before anything is built or written
                from synthforge.checkpoints import STAGE1, load_checkpoint

                load_checkpoint(ckpt, "--ckpt_path", expect=STAGE1)

        def instantiate_trainer(self, **kwargs):  # noqa: ANN003, ANN202 - LightningCLI's signature
            self.model.check_data(self.datamodule)  # before the Trainer prints anything
            return super().instantiate_trainer(**kwargs)

    return TrainCLI


def instantiate_cli(  # noqa: ANN201 - a LightningCLI instance or None
    cli_class: type, model_class: type, datamodule_class: type, argv: list[str], prog: str, **kwargs: object
):
    """Build a LightningCLI (``run=False``) for ``synthforge train`` / ``finetune``; None after ``--help``.

    Parser errors (unknown key, bad value) and missing files become a one-line :class:`UserError` (exit status 2).
    Lightning's "Seed set to N" message is silenced so that such an error stays the only line printed (the seed is
    recorded in the run's ``config.yaml``). ``kwargs`` go to the CLI class.
    """
    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*args parameter is intended")
            return cli_class(
                model_class,
                datamodule_class,
                run=False,
                args=argv or ["--help"],
                save_config_kwargs={"overwrite": True},
                parser_kwargs={"exit_on_error": False, "prog": prog},
                auto_configure_optimizers=False,
                **kwargs,
            )
    except ArgumentError as err:
        raise UserError(one_line(str(err))) from None
    except SystemExit as err:
        if err.code in (0, None):
            return None
        raise UserError("invalid arguments (see the message above)") from None
    except (FileNotFoundError, IsADirectoryError) as err:
        raise UserError(f"{err.filename}: {err.strerror}") from None


def main(argv: list[str]) -> int:
    """Parse, instantiate and fit; returns the exit status (UserError for bad input)."""
    from synthforge.data.datamodule import SynthDataModule
    from synthforge.system import MultiTaskSystem

    cli = instantiate_cli(_build_cli_class(), MultiTaskSystem, SynthDataModule, argv, "synthforge train")
    if cli is None:
        return 0
    ckpt = cli.config.get("ckpt_path")
    cli.trainer.fit(cli.model, datamodule=cli.datamodule, ckpt_path=ckpt, weights_only=True)
    sys.stdout.flush()
    return 0
