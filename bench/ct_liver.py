"""ct-liver on the real CTs: the node's model (preprocessing, tiles, clean-up, back to the source grid)
against bare torch running the same network on the same prepared 3 mm tensor (its tiles, forward only).

  python bench/inference.py --ct-liver        # or: python bench/ct_liver.py

Writes bench/out/inference_ct_liver.json. Needs the TotalSegmentator sdist and the pyliverlesionseg wheel
(fetched once with pip into $SEGNODE_CACHE).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.ct_liver.model import MIN_OVERLAP, TILE, CtLiver
from ai.ct_liver.network import SHRINK
from ai.ct_liver.preprocess import RasPlan, extract, network_input, tile_starts
from ai.device import choose_device
from bench.common import timed, write_result
from node.models_install import install_ct_liver
from tests.builders import totalseg

SCANS = ("example_ct_sm.nii.gz", "example_ct.nii.gz", "aorta_report/example_ct.nii.gz")


def bare_tiles(net: torch.nn.Module, x: torch.Tensor) -> None:
    out = tuple(t - SHRINK for t in TILE)
    starts = [tile_starts(n, o, MIN_OVERLAP) for n, o in zip(x.shape, out, strict=True)]
    amp = torch.autocast("cuda", dtype=torch.float16) if x.device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), amp:
        for a in starts[0]:
            for b in starts[1]:
                for c in starts[2]:
                    net(extract(x, (a - SHRINK // 2, b - SHRINK // 2, c - SHRINK // 2), TILE)[None, None])
    if x.device.type == "cuda":
        torch.cuda.synchronize()


def run(device_setting: str = "auto") -> dict:
    device = choose_device(device_setting)
    results: dict = {"device": str(device), "scans": {}}
    with tempfile.TemporaryDirectory() as tmp:
        model = CtLiver(install_ct_liver(Path(tmp)), device)
        for name in SCANS:
            volume = totalseg.real_ct_volume(name)
            plan = RasPlan.of(volume)
            with torch.inference_mode():
                x = network_input(plan.to_ras(torch.from_numpy(volume.voxels)).to(device), plan.spacing(volume))
            model.predict(volume)                                   # warm-up (allocator, kernels)
            labels, t_node = timed(lambda v=volume: model.predict(v))
            _, t_bare = timed(lambda x=x: bare_tiles(model.net, x))
            ml = float(labels.sum()) * float(torch.tensor(volume.spacing_mm).prod()) / 1000.0
            results["scans"][name] = {"shape": list(volume.voxels.shape), "grid_3mm": list(x.shape),
                                      "node_s": t_node, "bare_torch_s": t_bare, "ratio": t_node / t_bare,
                                      "liver_ml": ml}
            print(f"  {name:34s} {'x'.join(map(str, volume.voxels.shape)):12s} node {t_node:6.1f} s  "
                  f"bare {t_bare:6.1f} s  ratio {t_node / t_bare:5.2f}  liver {ml:7.0f} mL")
    print("wrote", write_result("inference_ct_liver", results))
    return results


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    run(ap.parse_args().device)
