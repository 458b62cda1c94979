"""Stage C evaluation throughput (images/s) per benchmark config, and evaluation memory vs number of images.

Builds drawn stand-in trees in the official layouts at the real datasets' image sizes (300W ~ 512 px, LaPa ~ 512 px,
CelebAMask-HQ 1024 px images with 512 px masks), a stage-I network of the default architecture
(``synthforge.models.build_default_net``: ResNet-18 UNet trunk, F = 64, 2-stack hourglass; random weights: the speed
does not depend on them) and the adapters of ``configs/finetune/<ds>.yaml``, then times ``synthforge evaluate``'s
loop (reading, cropping, both networks, mapping back to the original frame, metric accumulation). The reference in the
same process is the stage-I forward alone on the same crops, so ``ratio`` = evaluation time / stage-I time.

    python benchmarks/bench_finetune_eval.py [--images 24] [--batch 8] [--threads 0]

Numbers depend on the load of the machine; run on a quiet machine for comparable figures.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from finetune_trees import make_celebamask_hq, make_lapa, make_w300  # noqa: E402

from label_finetune.datasets import FinetuneDataModule  # noqa: E402
from label_finetune.evaluation import run_split  # noqa: E402
from label_finetune.system import FinetuneSystem  # noqa: E402
from synthforge.models import build_default_net  # noqa: E402

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "finetune"


def build_tree(ds: str, root: Path, n: int) -> tuple[str, dict]:
    """Returns (test split, extra datamodule kwargs)."""
    if ds == "w300":
        make_w300(
            root,
            size=512,
            counts={
                "afw": 1,
                "helen/trainset": 1,
                "lfpw/trainset": 1,
                "helen/testset": n,
                "lfpw/testset": 1,
                "ibug": 1,
            },
        )
        return "common", {}
    if ds == "lapa":
        make_lapa(root, size=512, counts={"train": 1, "val": 1, "test": n})
        return "test", {}
    make_celebamask_hq(root, image_size=1024, mask_size=512, partitions=[0, 1] + [2] * n)
    return "test", {"cache_dir": str(root / "cache")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = PyTorch's default)")
    ap.add_argument("--datasets", default="w300,lapa,celebamask_hq")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch threads: {torch.get_num_threads()}, images per dataset: {args.images}, batch: {args.batch}")
    for ds in args.datasets.split(","):
        cfg = yaml.safe_load((CONFIGS / f"{ds}.yaml").read_text())
        res = int(cfg["data"]["resolution"])
        with tempfile.TemporaryDirectory() as tmp:
            split, extra = build_tree(ds, Path(tmp) / ds, args.images)
            torch.manual_seed(0)
            net = build_default_net()
            model_args = {k: v for k, v in cfg["model"].items()}
            model = FinetuneSystem(dataset=ds, resolution=res, stage1=net, **model_args)
            dm = FinetuneDataModule(ds, str(Path(tmp) / ds), resolution=res, val_batch_size=args.batch, **extra)
            data = dm.dataset_for(split, return_original=True)
            if ds == "celebamask_hq":  # merge + cache the masks first (a one-time cost, reported separately)
                t = time.perf_counter()
                for i in range(len(data)):
                    data.labels(i)
                print(f"[{ds}] one-time mask merge + cache: {len(data) / (time.perf_counter() - t):.1f} images/s")
            run = run_split(model, data, batch_size=args.batch)
            ips = run["steady_images"] / run["steady_seconds"]
            # reference: the frozen stage-I forward alone on the same crops, same batches
            batches = [
                torch.stack([data[i]["image"] for i in range(s, min(s + args.batch, len(data)))])
                for s in range(0, len(data), args.batch)
            ]
            with torch.inference_mode():
                net.eval()
                net(batches[0])
                t = time.perf_counter()
                for b in batches[1:]:
                    net(b)
                ref = time.perf_counter() - t
            ref_ips = sum(len(b) for b in batches[1:]) / ref
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"[{ds}] {res} px crops, tasks {model.tasks}: evaluation {ips:.2f} images/s "
                f"(first batch excluded; {run['images'] / run['seconds']:.2f} images/s with it); "
                f"stage-I forward alone {ref_ips:.2f} images/s; ratio eval/stage-I time {ref_ips / ips:.2f}; "
                f"peak RSS so far {rss:.0f} MiB"
            )


if __name__ == "__main__":
    main()
