"""The models this node can run: the built-in ct-basic, ct-liver once installed, and MONAI bundles in a
local folder.

One model is held loaded at a time (per process): asking for another releases the first.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
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


@dataclass(frozen=True, slots=True)
class ModelStatus:
    """Whether a model can run, as found by building it once (at start, or by `segnode models check`)."""

    name: str
    ready: bool
    reason: str = ""                              # why not, when not ready
    card: ModelCard | None = None
    warnings: tuple[str, ...] = field(default=())

    def as_dict(self) -> dict[str, object]:
        base: dict[str, object] = {"name": self.name, "state": "ready" if self.ready else "unavailable",
                                   "available": self.ready, "reason": self.reason, "warnings": list(self.warnings)}
        return {**(self.card.as_dict() if self.card else {}), **base}


class ModelRegistry:
    def __init__(self, models_dir: Path, device: torch.device, window: SlidingWindow | None = None) -> None:
        self.models_dir = models_dir
        self.device = device
        self.window = window
        self._lock = threading.Lock()
        self._loaded: tuple[str, Segmenter] | None = None
        self._status: dict[str, ModelStatus] = {}

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

    def _names(self) -> list[str]:
        return [*BUILTIN, *self._native_dirs(), *self._bundle_dirs()]

    def _unknown(self, name: str) -> str:
        return (f"no model {name!r} (known: {', '.join(self._names())}; models are read from "
                f"{self.models_dir})")

    def _card(self, name: str) -> tuple[ModelCard | None, str]:
        """A model's card read from its folder (nothing built), or None and the reason it cannot be used."""
        if name in BUILTIN:
            return BUILTIN[name], ""
        try:
            native = self._native_dirs().get(name)
            if native is not None:
                check_weights(native)
                return read_liver_card(native)[0], ""
            return read_card(self._bundle_dirs()[name]), ""
        except ModelUnavailable as exc:
            return None, str(exc)

    def cards(self) -> list[tuple[ModelCard | None, str]]:
        """Every model with its card, or None and the reason (prefixed with its name) it cannot be used."""
        out = []
        for name in self._names():
            card, reason = self._card(name)
            out.append((card, f"{name}: {reason}" if reason else ""))
        return out

    def check(self) -> list[ModelStatus]:
        """Build every model once (parse, network, weights) and record whether it is ready; never raises.

        The last model built stays loaded; the others are released as the next one is built."""
        found = {}
        for name in self._names():
            found[name] = self._check_one(name)
        with self._lock:
            self._status = found
        return list(found.values())

    def _check_one(self, name: str) -> ModelStatus:
        try:
            model = self._load(name)
        except ModelUnavailable as exc:
            logger.warning("model %s unavailable: %s", name, exc)
            return ModelStatus(name, ready=False, reason=str(exc))
        except Exception as exc:           # a bundle's own code may raise anything; one bad bundle never stops us
            logger.exception("model %s: unexpected error while building it", name)
            return ModelStatus(name, ready=False, reason=f"{type(exc).__name__}: {str(exc)[:300]}")
        warnings = tuple(getattr(model, "warnings", ()) or model.card.notes)
        for w in warnings:
            logger.warning("model %s: %s", name, w)
        return ModelStatus(name, ready=True, card=model.card, warnings=warnings)

    def status(self) -> list[ModelStatus]:
        """The last check's result (models found since then are listed with their card, not yet built)."""
        with self._lock:
            known = dict(self._status)
        out = list(known.values())
        for name in self._names():
            if name not in known:               # only folders that appeared since the check are read here
                card, reason = self._card(name)
                out.append(ModelStatus(name, ready=card is not None, reason=reason, card=card))
        return out

    def unavailable_reason(self, name: str) -> str | None:
        """Why `name` cannot run, as of the last check (None: ready or not checked)."""
        with self._lock:
            st = self._status.get(name)
        if st is None:
            if self._status and name not in self._names():
                return self._unknown(name)
            return None
        return None if st.ready else st.reason

    def unload(self) -> None:
        """Release the loaded model (the node checks models but runs them in other processes)."""
        with self._lock:
            self._loaded = None
            release(self.device)

    def get(self, name: str) -> Segmenter:
        """The loaded model `name`; raises ModelUnavailable with the reason."""
        return self._load(name)

    def _load(self, name: str) -> Segmenter:
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
                    raise ModelUnavailable(self._unknown(name))
                model = BundleSegmenter(path, self.device, self.window)
            logger.info("model %s %s loaded on %s", name, model.card.version, self.device)
            self._loaded = (name, model)
            return model
