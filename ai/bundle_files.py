"""What the node reads from a MONAI bundle folder, in the layouts the MONAI model zoo publishes.

    configs/metadata.json        labels: network_data_format.outputs.<pred>.channel_def or label_def;
                                 optional "segnode" section (modalities, label names/codes)
    configs/inference.json|yaml  network_def, preprocessing, inferer, postprocessing; may `import scripts...`
                                 and name its labels in a top-level `labels: {name: number}` mapping
    scripts/                     the bundle's own Python package, importable while the bundle is built
    models/model.ts              TorchScript, or
    models/model.pt              a state dict, or a checkpoint dict holding one ("model", "state_dict", ...),
                                 or the file the config's CheckpointLoader handler names
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import monai
import torch
from monai.bundle import ConfigParser

from ai.anatomy import code_label, parse_code
from ai.errors import ModelUnavailable
from ai.segmenter import LabelSpec, ModelCard

CONFIG_NAMES = ("inference.json", "inference.yaml", "inference.yml")
_STATE_KEYS = ("model", "state_dict", "network", "model_state_dict", "net")
_IMPORT_LOCK = threading.RLock()
_BACKGROUND = {"background", "bg", "other", "none", "unlabeled", "unlabelled"}


def config_path(bundle: Path) -> Path:
    for name in CONFIG_NAMES:
        if (bundle / "configs" / name).is_file():
            return bundle / "configs" / name
    raise ModelUnavailable(f"bundle {bundle.name}: no configs/inference.json or configs/inference.yaml")


def read_metadata(bundle: Path) -> dict[str, Any]:
    path = bundle / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelUnavailable(f"bundle {bundle.name}: cannot read configs/metadata.json ({exc})") from None
    if not isinstance(meta, dict):
        raise ModelUnavailable(f"bundle {bundle.name}: configs/metadata.json is not a JSON object")
    return meta


def _label_names(meta: Mapping[str, Any], config: Mapping[str, Any]) -> dict[int, str]:
    """Label value -> name: metadata channel_def/label_def (the 'pred' output first), else the config's labels."""
    outputs = meta.get("network_data_format", {}).get("outputs", {}) if isinstance(meta, Mapping) else {}
    ordered = sorted(outputs.items(), key=lambda kv: kv[0] != "pred") if isinstance(outputs, Mapping) else []
    for _, out in ordered:
        for key in ("channel_def", "label_def"):
            table = out.get(key) if isinstance(out, Mapping) else None
            if isinstance(table, Mapping) and table:
                return {int(k): str(v) for k, v in table.items()}
    labels = config.get("labels")
    if isinstance(labels, Mapping) and labels:
        if all(isinstance(v, int) for v in labels.values()):
            return {int(v): str(k) for k, v in labels.items()}
        return {int(k): str(v) for k, v in labels.items()}
    raise ValueError("no label names: metadata.json has no network_data_format.outputs.pred.channel_def or "
                     "label_def, and the inference config has no `labels` mapping")


def display_name(name: str) -> str:
    """'kidney_right' -> 'Kidney right' (a SEG SegmentLabel, at most 64 characters)."""
    text = " ".join(name.replace("_", " ").split())
    return (text[:1].upper() + text[1:])[:64] or "Unnamed"


def build_card(bundle: Path, meta: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[ModelCard, list[str]]:
    """The model card and the warnings an admin should see at start (labels coded with the local scheme)."""
    extra = meta.get("segnode", {}) if isinstance(meta.get("segnode", {}), Mapping) else {}
    overrides = extra.get("labels", {})
    try:
        names = _label_names(meta, config)
    except (ValueError, TypeError) as exc:
        raise ModelUnavailable(f"bundle {bundle.name}: {exc}") from None
    labels, warnings = [], []
    for number, raw_name in sorted(names.items()):
        if number == 0 or (raw_name.strip().lower() in _BACKGROUND and number == min(names)):
            continue
        spec = overrides.get(str(number), {})
        name = str(spec.get("name", raw_name))
        coded = code_label(name)
        try:
            category = parse_code(spec["category"]) if "category" in spec else coded.category
            type_ = parse_code(spec["type"]) if "type" in spec else coded.type
            modifier = (parse_code(spec["modifier"]) if "modifier" in spec
                        else None if "type" in spec else coded.modifier)
            labels.append(LabelSpec(number=number, name=display_name(name), category=category, type=type_,
                                    modifier=modifier))
        except ValueError as exc:
            raise ModelUnavailable(f"bundle {bundle.name} label {number}: {exc}") from None
        if coded.local and "type" not in spec:
            warnings.append(f"label {number} {name!r} has no standard code: coded {type_.value} in the node's "
                            f"local scheme {type_.scheme_designator} (give one as segnode.labels.{number}.type "
                            "in metadata.json)")
    intended = str(meta.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("modality", ""))
    modalities = extra.get("modalities") or ([intended] if intended.upper() in ("CT", "MR", "PT") else [])
    unit = "1" if intended.upper() in ("MR", "PT") else "HU"
    try:
        card = ModelCard(name=bundle.name, version=str(meta.get("version", "0")),
                         description=str(meta.get("description", meta.get("name", bundle.name)))[:200],
                         modalities=tuple(str(m).upper() for m in modalities), labels=tuple(labels),
                         intensity_unit=str(extra.get("intensity_unit", unit)),
                         min_slices=int(extra.get("min_slices", 3)), notes=tuple(warnings))
    except ValueError as exc:
        raise ModelUnavailable(f"bundle {bundle.name}: {exc}") from None
    return card, warnings


@contextlib.contextmanager
def bundle_imports(bundle: Path) -> Iterator[None]:
    """The bundle root on sys.path, and no other bundle's `scripts` package cached, while it is parsed and built."""
    with _IMPORT_LOCK:
        stale = [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]
        saved = {m: sys.modules.pop(m) for m in stale}
        sys.path.insert(0, str(bundle))
        try:
            yield
        finally:
            with contextlib.suppress(ValueError):
                sys.path.remove(str(bundle))
            for m in [m for m in sys.modules if m == "scripts" or m.startswith("scripts.")]:
                del sys.modules[m]
            sys.modules.update(saved)


def read_config(bundle: Path) -> ConfigParser:
    path = config_path(bundle)
    parser = ConfigParser()
    try:
        parser.read_config(str(path))
    except Exception as exc:          # MONAI raises several kinds; the admin needs the file and the reason
        raise ModelUnavailable(f"bundle {bundle.name}: cannot read configs/{path.name} ({exc})") from None
    parser["bundle_root"] = str(bundle)
    return parser


def _checkpoint_from_handlers(parser: ConfigParser) -> tuple[Path, str] | None:
    """The weights file and load_dict key a config's CheckpointLoader handler names (e.g. models/dynunet_FT.pt)."""
    for section in ("handlers", "validate#handlers", "evaluator#val_handlers"):
        raw = parser.get(section)
        if not isinstance(raw, list):
            continue
        for i, h in enumerate(raw):
            if isinstance(h, dict) and str(h.get("_target_", "")).endswith("CheckpointLoader"):
                try:
                    path = Path(str(parser.get_parsed_content(f"{section}#{i}#load_path", instantiate=False)))
                except Exception:                    # an unparsable path: fall back to the other layouts
                    continue
                key = next(iter(h.get("load_dict", {"model": None})), "model")
                return path, str(key)
    return None


def weights_file(bundle: Path, parser: ConfigParser) -> tuple[Path, str]:
    models = bundle / "models"
    for name in ("model.ts", "model.pt"):
        if (models / name).is_file():
            return models / name, "model"
    named = _checkpoint_from_handlers(parser)
    if named is not None and named[0].is_file():
        return named
    others = sorted(models.glob("*.pt")) + sorted(models.glob("*.ts")) if models.is_dir() else []
    if len(others) == 1:
        return others[0], "model"
    hint = f" or {named[0].relative_to(bundle) if named[0].is_relative_to(bundle) else named[0]}" if named else ""
    raise ModelUnavailable(f"bundle {bundle.name}: no models/model.ts or models/model.pt{hint} "
                           "(download the weights with the bundle, e.g. monai.bundle.download, and copy the folder)")


def state_dict_of(checkpoint: object, key: str) -> dict[str, torch.Tensor]:
    """A state dict from a bare state dict or a checkpoint dict holding one; DataParallel prefixes removed."""
    if not isinstance(checkpoint, Mapping):
        raise ValueError(f"expected a state dict or a checkpoint dict, got {type(checkpoint).__name__}")
    state: Any = checkpoint
    for k in (key, *_STATE_KEYS):
        if isinstance(checkpoint.get(k), Mapping):
            state = checkpoint[k]
            break
    if not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError("the checkpoint holds no state dict (keys: " + ", ".join(list(map(str, checkpoint))[:8]) + ")")
    if state and all(str(k).startswith("module.") for k in state):
        state = {str(k)[len("module."):]: v for k, v in state.items()}
    return dict(state)


def explain(exc: BaseException) -> str:
    """One line for the status page: the innermost cause, and a hint when it smells of a MONAI version change."""
    inner: BaseException = exc
    while inner.__cause__ is not None:
        inner = inner.__cause__
    text = f"{inner}".split("\n")[0][:300] or type(inner).__name__
    if isinstance(inner, (TypeError, AttributeError, ImportError)) and (
            "unexpected keyword" in text or "has no attribute" in text or "cannot import" in text
            or "missing" in text):
        text += f" (a MONAI version mismatch: this node runs MONAI {monai.__version__})"
    return text
