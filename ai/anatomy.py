"""Label names to coded concepts, with no hand work: the dictionary in anatomy_codes.json, matched forgivingly.

A name is split into words (case, '_', '-', spaces and word order do not matter), common misspellings and
plurals are mended, and 'left'/'right' become a laterality modifier (SCT 7771000 Left / 24028007 Right)
unless the dictionary has the sided concept itself ('heart atrium left' -> Left atrium). A name the
dictionary still cannot code gets a code of the node's own coding scheme (LOCAL_SCHEME) with the
label's name as meaning: it works, and `CodedLabel.local` says it deserves a warning.
"""

from __future__ import annotations

import functools
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

from pydicom.sr.coding import Code

CODES_FILE = Path(__file__).resolve().parent / "anatomy_codes.json"
LOCAL_SCHEME = "99SEGNODE"         # a private coding scheme: PS3.3 8.2 reserves designators starting "99"
LOCAL_SCHEME_NAME = "Segnode local label names"
LEFT = Code("7771000", "SCT", "Left")
RIGHT = Code("24028007", "SCT", "Right")
_SIDES = {"left": LEFT, "right": RIGHT}
_STOP = {"of", "the", "and", "structure", "s"}
_KEEP_S = ("us", "ss", "is", "as", "ys", "os")


@dataclass(frozen=True, slots=True)
class CodedLabel:
    category: Code                 # SegmentedPropertyCategoryCodeSequence
    type: Code                     # SegmentedPropertyTypeCodeSequence
    modifier: Code | None = None   # SegmentedPropertyTypeModifierCodeSequence (laterality)
    local: bool = False            # coded with LOCAL_SCHEME: no standard concept was found


def _words(name: str, misspellings: dict[str, str]) -> list[str]:
    spaced = re.sub(r"([a-z])([A-Z])", r"\1 \2", name)            # 'RightKidney' -> 'Right Kidney'
    out = []
    for w in re.split(r"[^0-9a-z]+", spaced.lower()):
        if not w or w in _STOP:
            continue
        w = misspellings.get(w, w)
        if len(w) > 4 and w.endswith("s") and not w.endswith(_KEEP_S):
            w = misspellings.get(w[:-1], w[:-1])
        out.append(w)
    return out


def _key(words: list[str]) -> str:
    return " ".join(sorted(set(words)))


@dataclass(frozen=True, slots=True)
class _Dictionary:
    categories: dict[str, Code]
    structures: dict[str, tuple[Code, str]]      # normalised key -> (type, category key)
    misspellings: dict[str, str]


@functools.cache
def _dictionary(path: Path = CODES_FILE) -> _Dictionary:
    raw = json.loads(path.read_text())
    misspellings = {str(k): str(v) for k, v in raw["misspellings"].items()}
    categories = {k: Code(v[0], "SCT", v[1]) for k, v in raw["categories"].items()}
    structures: dict[str, tuple[Code, str]] = {}
    for name, entry in raw["structures"].items():
        key = _key(_words(name, misspellings))
        structures.setdefault(key, (Code(entry[0], "SCT", entry[1]), entry[2] if len(entry) > 2 else "anatomy"))
    return _Dictionary(categories, structures, misspellings)


def local_code(name: str) -> Code:
    """A stable code of the node's own scheme for a name no dictionary knows; its meaning is the name."""
    digest = hashlib.sha1(name.strip().lower().encode()).hexdigest()[:10]
    return Code(f"L{digest}", LOCAL_SCHEME, name.strip()[:64] or "unnamed")


def code_label(name: str) -> CodedLabel:
    """The category, type and laterality modifier for a model's label name; never raises for a non-empty name."""
    d = _dictionary()
    words = _words(name, d.misspellings)
    hit = d.structures.get(_key(words))
    if hit is not None:
        return CodedLabel(category=d.categories[hit[1]], type=hit[0])
    sides = [w for w in words if w in _SIDES]
    rest = [w for w in words if w not in _SIDES]
    hit = d.structures.get(_key(rest)) if rest else None
    if hit is not None:
        modifier = _SIDES[sides[0]] if len(set(sides)) == 1 else None
        return CodedLabel(category=d.categories[hit[1]], type=hit[0], modifier=modifier)
    return CodedLabel(category=d.categories["anatomy"], type=local_code(name), local=True)


def parse_code(text: str) -> Code:
    """'SCT:78961009:Spleen' -> Code (an admin's explicit code in metadata.json)."""
    parts = text.split(":", 2)
    if len(parts) != 3 or not all(p.strip() for p in parts):
        raise ValueError(f"a code is written 'SCHEME:VALUE:Meaning', e.g. 'SCT:78961009:Spleen'; got {text!r}")
    return Code(parts[1].strip(), parts[0].strip(), parts[2].strip())
