"""Inference benchmark: the node's paths against bare MONAI sliding_window_inference, same array, same run.

  python bench/inference.py                 # 512 x 512 x 300 CT (the reference size)
  python bench/inference.py --slices 100 --rows 256   # quicker
  python bench/inference.py --ct-liver      # ct-liver on the real CTs against bare torch (bench/ct_liver.py)

Prints ratios and writes bench/out/inference.json. Runs unchanged on a CUDA machine (AMP there).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from monai.inferers import sliding_window_inference
from monai.networks.nets import UNet

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.bundle import BundleSegmenter
from ai.ct_basic import CtBasic
from ai.device import choose_device
from ai.volume import volume_from_datasets
from bench.common import timed, write_result
from node.compute.series import read_series
from node.synth.phantom import make_phantom
from node.synth.series import phantom_datasets, write_datasets

UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 4, "channels": [16, 32, 64, 128, 256],
        "strides": [2, 2, 2, 2], "num_res_units": 2}


def write_bundle(root: Path, net: torch.nn.Module, roi: int, sw_batch: int) -> Path:
    """A bundle whose preprocessing is intensity scaling only, so both paths see the same array."""
    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps({
        "network_def": {"_target_": "UNet", **UNET},
        "preprocessing": {"_target_": "Compose", "transforms": [
            {"_target_": "LoadImaged", "keys": "image"},
            {"_target_": "EnsureChannelFirstd", "keys": "image"},
            {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -1000, "a_max": 1000,
             "b_min": 0.0, "b_max": 1.0, "clip": True}]},
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": [roi] * 3, "sw_batch_size": sw_batch,
                    "overlap": 0.25}}))
    (root / "configs" / "metadata.json").write_text(json.dumps({
        "version": "0", "network_data_format": {"outputs": {"pred": {"channel_def": {
            "0": "background", "1": "soft tissue", "2": "lung", "3": "bone"}}}}}))
    torch.save(net.state_dict(), root / "models" / "model.pt")
    return root


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--roi", type=int, default=96)
    ap.add_argument("--sw-batch", type=int, default=4)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--ct-liver", action="store_true", help="benchmark ct-liver on the real CTs instead")
    args = ap.parse_args()
    if args.ct_liver:
        from bench.ct_liver import run
        run(args.device)
        return
    warnings.filterwarnings("ignore")
    device = choose_device(args.device)
    amp = device.type == "cuda"
    torch.manual_seed(0)
    net = UNet(**UNET).to(device).eval()

    with tempfile.TemporaryDirectory() as tmp:
        phantom = make_phantom(args.slices, args.rows, seed=0)
        paths = write_datasets(Path(tmp) / "ct", phantom_datasets(phantom))
        print(f"volume {args.slices}x{args.rows}x{args.rows} on {device}")

        # node path, ct-basic: files -> datasets -> volume -> labels
        datasets, t_read = timed(lambda: read_series(paths))
        volume, t_volume = timed(lambda: volume_from_datasets(datasets))
        ct_basic = CtBasic(device)
        _, t_ctbasic = timed(lambda: ct_basic.predict(volume))

        # bare MONAI on the same array (already scaled, already on the device)
        x = torch.from_numpy(((volume.voxels.transpose(2, 1, 0) + 1000.0) / 2000.0).clip(0, 1))[None, None]

        def bare() -> torch.Tensor:
            with torch.inference_mode(), torch.autocast(device.type, enabled=amp):
                logits = sliding_window_inference(x.to(device), (args.roi,) * 3, args.sw_batch, net, overlap=0.25,
                                                  mode="gaussian")
            return logits.argmax(1).cpu()
        _, t_bare = timed(bare)

        bundle = BundleSegmenter(write_bundle(Path(tmp) / "bundle", net, args.roi, args.sw_batch), device)
        _, t_bundle = timed(lambda: bundle.predict(volume))

    node_ct = t_read + t_volume + t_ctbasic
    result = {
        "shape": [args.slices, args.rows, args.rows], "device": str(device), "roi": args.roi,
        "seconds": {"read_series": t_read, "volume": t_volume, "ct_basic": t_ctbasic, "node_ct_basic_path": node_ct,
                    "bare_monai_sliding_window": t_bare, "node_bundle_path": t_bundle},
        "ratios": {"node_ct_basic_path / bare_monai": node_ct / t_bare,
                   "node_bundle_path / bare_monai": t_bundle / t_bare},
    }
    for k, v in result["seconds"].items():
        print(f"  {k:28s} {v:8.2f} s")
    for k, v in result["ratios"].items():
        print(f"  {k:34s} {v:6.3f}")
    print(f"bundle overhead over bare inference: {100 * (t_bundle / t_bare - 1):+.1f} % (goal < 20 %)")
    print("wrote", write_result("inference", result))


if __name__ == "__main__":
    main()
