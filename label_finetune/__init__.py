"""SynthForge stage C: label fine-tuning on real benchmarks with a frozen stage-B network.

* :mod:`label_finetune.datasets`: 300W, LaPa and CelebAMask-HQ read from their official layouts, and the datamodule.
* :mod:`label_finetune.heads`: the small per-task networks (segmentation UNet, landmark hourglass, depth UNet).
* :mod:`label_finetune.system`: :class:`~label_finetune.system.FinetuneSystem` (frozen stage I + trained adapters).
* :mod:`label_finetune.evaluation`: streamed metrics in the original image frame, tables, JSON / CSV.
* :mod:`label_finetune.paper`: published table rows stored as data.
"""
