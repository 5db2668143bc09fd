"""The models this node can run: the built-in ct-basic, ct-liver once installed, and MONAI bundles in a
local folder.

One model is held loaded at a time (per process): asking for another releases the first.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch

from ai.bundle import BundleSegmenter, SlidingWindow, read_card
from ai.ct_basic import CT_BASIC_CARD, CtBasic
from ai.ct_liver.convert import KIND as CT_LIVER
from ai.ct_liver.model import CtLiver, check_weights, is_liver_folder, read_liver_card
from ai.device import release
from ai.errors import ModelUnavailable
from ai.segmenter import ModelCard, Segmenter

logger = logging.getLogger(__name__)
BUILTIN = {CT_BASIC_CARD.name: CT_BASIC_CARD}


class ModelRegistry:
    def __init__(self, models_dir: Path, device: torch.device, window: SlidingWindow | None = None) -> None:
        self.models_dir = models_dir
        self.device = device
        self.window = window
        self._lock = threading.Lock()
        self._loaded: tuple[str, Segmenter] | None = None

    def _bundle_dirs(self) -> dict[str, Path]:
        if not self.models_dir.is_dir():
            return {}
        return {p.name: p for p in sorted(self.models_dir.iterdir())
                if (p / "configs" / "metadata.json").exists() and p.name not in BUILTIN}

    def _native_dirs(self) -> dict[str, Path]:
        """Folders of natively ported models (ct-liver, written by `segnode models install ct-liver`)."""
        if not self.models_dir.is_dir():
            return {}
        return {p.name: p for p in sorted(self.models_dir.iterdir())
                if p.is_dir() and (p.name == CT_LIVER or is_liver_folder(p)) and p.name not in BUILTIN}

    def cards(self) -> list[tuple[ModelCard | None, str]]:
        """Every model with its card, or None and the reason it cannot be used."""
        out: list[tuple[ModelCard | None, str]] = [(card, "") for card in BUILTIN.values()]
        for name, path in self._native_dirs().items():
            try:
                check_weights(path)
                out.append((read_liver_card(path)[0], ""))
            except ModelUnavailable as exc:
                out.append((None, f"{name}: {exc}"))
        for name, path in self._bundle_dirs().items():
            try:
                out.append((read_card(path), ""))
            except ModelUnavailable as exc:
                out.append((None, f"{name}: {exc}"))
        return out

    def get(self, name: str) -> Segmenter:
        """The loaded model `name`; raises ModelUnavailable with the reason."""
        with self._lock:
            if self._loaded is not None and self._loaded[0] == name:
                return self._loaded[1]
            if self._loaded is not None:
                self._loaded = None
                release(self.device)
            if name in BUILTIN:
                model: Segmenter = CtBasic(self.device)
            elif name in self._native_dirs():
                model = CtLiver(self._native_dirs()[name], self.device)
            else:
                path = self._bundle_dirs().get(name)
                if path is None:
                    known = ", ".join([*BUILTIN, *self._bundle_dirs()])
                    raise ModelUnavailable(f"no model {name!r} (known: {known}; bundles are read from "
                                           f"{self.models_dir})")
                model = BundleSegmenter(path, self.device, self.window)
            logger.info("model %s %s loaded on %s", name, model.card.version, self.device)
            self._loaded = (name, model)
            return model
