"""MONAI bundles from a local folder: labels and pre/post-processing from the bundle's configs.

Layouts (JSON or YAML config, channel_def or label_def, scripts/, state dict, checkpoint or TorchScript):
see ai/bundle_files.py. Nothing is ever downloaded.

Axes: a bundle that reorients (Orientationd) gets the volume's own array, (slice, row, column), without a
copy, and a RAS affine saying so; its preprocessing runs lazily (MONAI fuses orientation and spacing into
one float32 resampling, so the volume is neither flipped into a copy nor widened to float64). A bundle that
does not reorient sees the volume as MONAI's ITK reader would load DICOM, (column, row, slice) = (x, y, z).
Labels come back onto the source grid as uint8 (ai/bundle_post.py) and are returned in ai/'s
(slice, row, column).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import SlidingWindowInferer
from monai.transforms import Compose

from ai.bundle_files import (
    build_card,
    bundle_imports,
    explain,
    read_config,
    read_metadata,
    state_dict_of,
    weights_file,
)
from ai.bundle_post import LabelPlan, channel_argmax, labels_to_grid, plan_labels
from ai.device import to_device
from ai.errors import ModelUnavailable
from ai.segmenter import MemoryProfile, ModelCard, Progress, check_suitable
from ai.volume import Volume

_SKIP = re.compile(r"^(LoadImage|SaveImage)")


@dataclass(frozen=True, slots=True)
class SlidingWindow:
    roi_size: tuple[int, int, int] | None = None     # None: the bundle's inferer setting
    overlap: float | None = None
    sw_batch_size: int | None = None


def read_card(bundle: Path) -> ModelCard:
    """The model card: labels from metadata.json (channel_def or label_def) or the config's `labels`, each coded."""
    meta = read_metadata(bundle)
    parser = read_config(bundle)
    return build_card(bundle, meta, parser.config if isinstance(parser.config, dict) else {})[0]


def _strip_io(parser: ConfigParser, key: str) -> None:
    """Drop file loaders and savers from a Compose config before it is built (the node hands over arrays)."""
    raw = parser.get(key)
    if isinstance(raw, dict) and isinstance(raw.get("transforms"), list):
        kept = [t for t in raw["transforms"]
                if not (isinstance(t, dict) and _SKIP.match(str(t.get("_target_", "")).rsplit(".", 1)[-1]))]
        parser.set({**raw, "transforms": kept}, key)


_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ras_affine(volume: Volume) -> np.ndarray:
    """Affine of the (column, row, slice) array in RAS mm."""
    return _LPS_TO_RAS @ volume.affine[:, [2, 1, 0, 3]]


def _fingerprint(voxels: np.ndarray) -> float:
    return float(np.sum(voxels, dtype=np.float64))


def _run(steps: tuple[Any, ...], data: dict[str, Any]) -> torch.Tensor:
    for t in steps:
        data = t(data)
    return torch.as_tensor(data["pred"])


def _as_labels(t: torch.Tensor) -> torch.Tensor:
    return t.round().to(torch.uint8) if t.is_floating_point() else t.to(torch.uint8)


# A postprocessing run as written holds every channel's scores on the source grid, with the resampling's
# temporaries: measured 26.4-26.8 x the volume for 8 channels (predict's growth at 96 and 192 slices), and
# up to 34.4 x in a process whose heap had served many jobs before (the whole test suite's): 4.25 per
# channel covers that.
AS_WRITTEN_PER_CHANNEL = 4.25


class BundleSegmenter:
    """Satisfies ai.segmenter.Segmenter. The network is loaded once, on construction."""

    def __init__(self, bundle: Path, device: torch.device | str = "cpu", window: SlidingWindow | None = None) -> None:
        self.path = bundle
        self.device = torch.device(device)
        meta = read_metadata(bundle)
        parser = read_config(bundle)
        self.card, self.warnings = build_card(bundle, meta, parser.config if isinstance(parser.config, dict) else {})
        parser["device"] = str(self.device)
        with bundle_imports(bundle):
            self.network = self._load_network(parser)
            for key in ("preprocessing", "postprocessing"):
                if key in parser:
                    _strip_io(parser, key)
            try:
                self.preprocessing = parser.get_parsed_content("preprocessing") if "preprocessing" in parser \
                    else Compose([])
                self.postprocessing = parser.get_parsed_content("postprocessing") if "postprocessing" in parser \
                    else None
                base = parser.get_parsed_content("inferer") if "inferer" in parser else None
            except Exception as exc:
                raise ModelUnavailable(f"bundle {bundle.name}: transforms: {explain(exc)}") from None
        steps = getattr(self.preprocessing, "transforms", [])
        self._channel_first = any(type(t).__name__.startswith("EnsureChannelFirst") for t in steps)
        self._reorients = isinstance(self.preprocessing, Compose) and any(
            type(t).__name__.startswith("Orientation") for t in steps)
        if self._reorients:
            # one fused float32 resampling: Spacingd alone would flip a copy of the volume, then widen it to
            # float64 (2 x the volume) and build a float64 sampling grid
            self.preprocessing.lazy = True
            self.preprocessing.overrides = {"image": {"dtype": torch.float32}}
        self.plan: LabelPlan | None = plan_labels(self.postprocessing)
        if not self._labels_on_network_grid():
            self.warnings.append("its postprocessing is run as written: every channel's scores are brought back "
                                 "onto the source grid before labels are taken (a job needs about channels x "
                                 "the study's volume in memory)")
        w = window or SlidingWindow()
        self.inferer = SlidingWindowInferer(
            roi_size=w.roi_size or getattr(base, "roi_size", (96, 96, 96)),
            sw_batch_size=w.sw_batch_size or getattr(base, "sw_batch_size", 4),
            overlap=w.overlap if w.overlap is not None else getattr(base, "overlap", 0.25),
            mode=getattr(base, "mode", "gaussian") if base is not None else "gaussian")

    def memory_profile(self, spacing_mm: tuple[float, float, float]) -> MemoryProfile:
        """The volume, then per network-grid voxel (r of them per source voxel, from Spacingd's pixdim): the
        lazy resampling's float32 grid and output (~7.5 floats), or the sliding window's C channels, count map
        and input; with a postprocessing run as written, C channels and a sampling grid on the source grid.
        Calibrated on bench/memory.py's 4-channel bundle on a 1.5 mm grid (measured 0.38 GiB + 2.30 x the
        volume)."""
        pixdim = next((np.asarray(t.spacing_transform.pixdim, np.float64)
                       for t in getattr(self.preprocessing, "transforms", []) if hasattr(t, "spacing_transform")),
                      None)
        ratio = 1.0 if pixdim is None or pixdim.size != 3 or (pixdim <= 0).any() else \
            float(np.prod(spacing_mm) / np.prod(pixdim))
        channels = self._channels()
        factor = 1.1 + ratio * max(7.5, channels + 4.0)
        if not self._labels_on_network_grid():
            factor += AS_WRITTEN_PER_CHANNEL * channels
        return MemoryProfile(fixed_mb=768, volume_factor=factor)

    def _channels(self) -> int:
        return max(label.number for label in self.card.labels) + 1

    def _labels_on_network_grid(self) -> bool:
        """Whether predict takes labels on the network grid (else the bundle's own postprocessing runs as
        written, every channel's scores on the source grid). Channels are counted from the labels, as the
        network's output is only known once it runs."""
        return self.plan is not None and self.plan.takes(self._channels())

    def _load_network(self, parser: ConfigParser) -> torch.nn.Module:
        path, key = weights_file(self.path, parser)
        where = f"bundle {self.path.name}"
        if path.suffix == ".ts":
            try:
                return torch.jit.load(str(path), map_location=self.device).eval()
            except Exception as exc:
                raise ModelUnavailable(f"{where}: weights {path.name}: {explain(exc)}") from None
        name = "network_def" if "network_def" in parser else "network"
        try:
            net = parser.get_parsed_content(name)
        except Exception as exc:
            raise ModelUnavailable(f"{where}: {name}: {explain(exc)}") from None
        try:
            checkpoint = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:
            try:                              # TorchScript saved as .pt
                return torch.jit.load(str(path), map_location=self.device).eval()
            except Exception:
                raise ModelUnavailable(f"{where}: weights {path.name}: {explain(exc)}") from None
        try:
            net.load_state_dict(state_dict_of(checkpoint, key))
        except Exception as exc:
            raise ModelUnavailable(f"{where}: weights {path.name} do not fit {name}: {explain(exc)}") from None
        return net.to(self.device).eval()

    def predict(self, volume: Volume, progress: Progress | None = None) -> np.ndarray:
        check_suitable(self.card, volume)
        report = progress or (lambda _f, _s: None)
        image, affine = self._input(volume)
        shape = tuple(image.shape[-3:])
        before = _fingerprint(volume.voxels) if self._reorients else None
        report(0.05, "preprocessing")
        data = self.preprocessing({"image": image})
        del image
        if before is not None and _fingerprint(volume.voxels) != before:
            raise RuntimeError(f"bundle {self.card.name}: its preprocessing wrote into the input image in place")
        x = to_device(data["image"].as_tensor(), self.device)[None]
        use_amp = self.device.type == "cuda"
        with torch.inference_mode(), torch.autocast(self.device.type, enabled=use_amp):
            scores = self._infer(x, report)[0]
        del x
        report(0.9, "labels back onto the source grid")
        if self.plan is not None and self.plan.takes(scores.shape[0]):
            net_labels, net_affine = self._network_labels(self.plan, data, scores)
            del scores, data                      # the scores' C channels are not needed past the argmax
            labels = self._source_labels(self.plan, net_labels, net_affine, affine, shape)
        else:
            labels = self._bundle_postprocessing(data, scores.float())
        if labels.shape != shape:
            raise RuntimeError(f"bundle {self.card.name}: output {labels.shape} does not match input {shape}")
        return labels if self._reorients else np.ascontiguousarray(labels.transpose(2, 1, 0))

    def _input(self, volume: Volume) -> tuple[MetaTensor, np.ndarray]:
        """The image the preprocessing gets, and its affine: the volume's own (slice, row, column) array when
        the bundle reorients (no copy), else a (column, row, slice) copy."""
        if self._reorients:
            affine = _LPS_TO_RAS @ volume.affine
            array = torch.from_numpy(volume.voxels)
        else:
            affine = _ras_affine(volume)
            array = torch.from_numpy(np.ascontiguousarray(volume.voxels.transpose(2, 1, 0)))
        if self._channel_first:
            return MetaTensor(array, affine=torch.from_numpy(affine),
                              meta={"original_channel_dim": "no_channel", "space": "RAS"}), affine
        return MetaTensor(array[None], affine=torch.from_numpy(affine)), affine

    def _infer(self, x: torch.Tensor, report: Progress) -> torch.Tensor:
        report(0.1, "inference")
        out = self.inferer(x, self.network)
        assert isinstance(out, torch.Tensor)
        report(0.85, "inference done")
        return out

    def _network_labels(self, plan: LabelPlan, data: dict[str, Any],
                        scores: torch.Tensor) -> tuple[torch.Tensor, np.ndarray]:
        """uint8 labels on the network grid (the plan's steps up to Invertd), and that grid's affine."""
        image = data["image"]
        net_affine, meta = image.affine.detach().cpu().numpy().astype(np.float64), dict(image.meta)
        del image

        def wrap(t: torch.Tensor) -> MetaTensor:
            return MetaTensor(t, affine=torch.from_numpy(net_affine), meta=dict(meta))
        if plan.on_scores:
            scores = _run(plan.on_scores, {**data, "pred": wrap(scores)})
        labels = plan.discrete(scores)
        if plan.on_network_labels:
            labels = _as_labels(_run(plan.on_network_labels, {**data, "pred": wrap(labels[None])}))[0]
        return labels, net_affine

    def _source_labels(self, plan: LabelPlan, labels: torch.Tensor, net_affine: np.ndarray, affine: np.ndarray,
                       shape: tuple[int, ...]) -> np.ndarray:
        """The network-grid labels on the grid of the image the preprocessing got (ai/bundle_post.py), then the
        plan's steps after Invertd: never C x the volume."""
        out = labels_to_grid(labels.cpu().numpy(), net_affine, affine, shape, linear=plan.linear)
        if plan.on_source_labels:
            source = MetaTensor(torch.from_numpy(out)[None], affine=torch.from_numpy(affine))
            out = _as_labels(_run(plan.on_source_labels, {"pred": source}))[0].cpu().numpy()
        return out

    def _bundle_postprocessing(self, data: dict[str, Any], pred: torch.Tensor) -> np.ndarray:
        """The bundle's own postprocessing as written, on all channels (the path for what bundle_post.py
        cannot rearrange)."""
        image = data["image"]
        pred_mt = MetaTensor(pred.cpu(), affine=image.affine, meta=dict(image.meta))
        if self.postprocessing is not None:
            out = self.postprocessing({**data, "image": image.cpu(), "pred": pred_mt})["pred"]
        else:
            pred_mt.applied_operations = list(image.applied_operations)
            out = self.preprocessing.inverse({"image": pred_mt})["image"]
        arr = torch.as_tensor(out).cpu()
        if arr.ndim == 4:
            if arr.shape[0] > 1:
                return channel_argmax(arr).numpy()
            arr = arr[0]
        return arr.round().to(torch.uint8).numpy()
