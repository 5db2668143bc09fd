"""Bundles in every published layout load, run and give valid, fully coded SEG + SR; broken ones say why at start."""

from __future__ import annotations

import json
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np
import pytest
import torch
from pydicom import dcmread

from ai.anatomy import LEFT, LOCAL_SCHEME, RIGHT, code_label
from ai.bundle import BundleSegmenter
from ai.measure import dice, measure
from ai.registry import ModelRegistry
from ai.volume import volume_from_datasets
from node.results.dicom import encode, encode_checked
from node.results.ids import ResultIds
from node.results.seg import build_segmentation
from node.results.sr import build_report
from node.synth.phantom import BODY, BONE, LUNGS, make_phantom
from node.synth.series import phantom_datasets
from tests.builders.bundle_layouts import BTCV_LABELS, WHOLE_BODY_LABELS, build_btcv_on_old_monai, build_layout_bundle
from tests.peers.helpers import dciodvfy

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning",
                                        "ignore::DeprecationWarning")
PEDIATRIC = ["background", "liver", "spleen", "pancreas"]
LAYOUTS = {   # name: (labels, soft, lung, bone, config, label source, weights)
    "json-channel_def-state_dict": (BTCV_LABELS, 6, 1, 2, "json", "channel_def", "state_dict"),
    "yaml-label_def-named_checkpoint": (PEDIATRIC, 1, 2, 3, "yaml", "label_def", "named"),
    "yaml-config_labels-checkpoint": (PEDIATRIC, 1, 2, 3, "yaml", "config", "checkpoint"),
    "json-channel_def-torchscript-2ch": (["background", "liver"], 1, 1, 1, "json", "channel_def", "torchscript"),
    "json-channel_def-105ch": (WHOLE_BODY_LABELS, 5, 15, 58, "json", "channel_def", "checkpoint"),
}


@pytest.fixture(scope="module")
def phantom():
    p = make_phantom(slices=24, rows=64, seed=2)
    datasets = phantom_datasets(p)
    return p, datasets, volume_from_datasets(datasets)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("layouts")
    for name, (names, soft, lung, bone, config, labels, weights) in LAYOUTS.items():
        build_layout_bundle(root / name, names=names, soft=soft, lung=lung, bone=bone, config=config, labels=labels,
                            weights=weights)
    build_btcv_on_old_monai(root / "swin-unetr-btcv")
    return root


def test_the_whole_body_and_btcv_label_lists_are_coded_without_local_codes() -> None:
    assert len(WHOLE_BODY_LABELS) == 105
    for name in [*WHOLE_BODY_LABELS[1:], *BTCV_LABELS[1:]]:
        assert not code_label(name).local, name
    right, left = code_label("Right Kidney"), code_label("Left Kideny")
    assert (right.type.value, right.modifier.meaning, left.modifier.meaning) == ("64033007", "Right", "Left")
    assert code_label("kidney_right") == code_label("right kidney") == code_label("RightKidney")
    atrium = code_label("heart_atrium_left")
    assert atrium.type.meaning == "Left atrium" and atrium.modifier is None
    odd = code_label("frobnicator_zone")
    assert odd.local and odd.type.scheme_designator == LOCAL_SCHEME and odd.type.meaning == "frobnicator_zone"


# SCT codes of the dictionary that pydicom's PS3.16 tables do not carry, each checked against a published
# mapping of TotalSegmentator's labels (3D Slicer's TotalSegmentator extension terminology; the MOOSE SNOMED
# mapping for myocardium and the gluteus muscles, whose "structure of" concepts the dictionary uses).
VERIFIED_OUTSIDE_PYDICOM = {
    "48535007": "First rib", "78247007": "Second rib", "25888004": "Third rib", "25523003": "Fourth rib",
    "15339008": "Fifth rib", "59558009": "Sixth rib", "24915002": "Seventh rib", "5953002": "Eighth rib",
    "22565002": "Ninth rib", "77644006": "Tenth rib", "58830002": "Eleventh rib", "43993008": "Twelfth rib",
    "206007": "Gluteus maximus muscle", "78333006": "Gluteus medius muscle", "75297007": "Gluteus minimus muscle",
    "68455001": "Iliopsoas muscle", "74281007": "Myocardium",
}


def test_every_dictionary_code_has_pydicom_s_meaning_or_was_verified_elsewhere() -> None:
    from pydicom.sr._concepts_dict import concepts
    known: dict[str, set[str]] = {}
    for by_code in concepts["SCT"].values():
        for code, (meaning, _cids) in by_code.items():
            known.setdefault(code, set()).add(meaning)
    raw = json.loads((Path(__file__).resolve().parents[2] / "ai" / "anatomy_codes.json").read_text())
    entries = [(name, e[0], e[1]) for name, e in raw["structures"].items()]
    entries += [(f"category {k}", v[0], v[1]) for k, v in raw["categories"].items()]
    entries += [("laterality", LEFT.value, LEFT.meaning), ("laterality", RIGHT.value, RIGHT.meaning)]
    wrong = [(name, code, meaning, sorted(known[code])) for name, code, meaning in entries
             if code in known and meaning not in known[code]]
    assert wrong == [], "meanings that differ from pydicom's (PS3.16) for the same code"
    outside = {code: meaning for _name, code, meaning in entries if code not in known}
    assert outside == VERIFIED_OUTSIDE_PYDICOM, "a code pydicom does not know must be verified and listed here"
    assert len({code for _n, code, _m in entries if code in known}) >= 0.9 * len({c for _n, c, _m in entries})


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_runs_and_gives_a_valid_seg_and_sr(layout: str, layouts: Path, phantom, tmp_path: Path) -> None:
    p, datasets, volume = phantom
    names, soft, lung, bone, *_ = LAYOUTS[layout]
    model = BundleSegmenter(layouts / layout)
    labels = model.predict(volume)
    truth = p.truth[::-1]
    assert dice(labels == soft, truth == (BODY if len(names) > 2 else truth.max())) > 0.8 or len(names) == 2
    if len(set((soft, lung, bone))) == 3:
        assert dice(labels == lung, truth == LUNGS) > 0.8 and dice(labels == bone, truth == BONE) > 0.8
    card = model.card
    assert len(card.labels) == len(names) - 1 and not card.notes
    by_uid = {d.SOPInstanceUID: d for d in datasets}
    sources = [by_uid[u] for u in volume.source_uids]
    ids = ResultIds.for_series("job", 1, sources[0].SeriesInstanceUID, 1)
    seg = build_segmentation(sources, labels, card, ids)
    measurements = measure(labels, volume.voxels, volume.spacing_mm, card)
    sr = build_report(seg, sources, measurements, card, ids, "job", 1)
    encoded = encode_checked(seg, sr, str(sources[0].SeriesInstanceUID), len(measurements))
    hd.sr.Comprehensive3DSR.from_dataset(dcmread(BytesIO(encoded[1])))
    for kind, data in (("seg", encoded[0]), ("sr", encoded[1])):
        path = tmp_path / f"{kind}.dcm"
        path.write_bytes(data)
        assert dciodvfy(path).errors == [], (kind, dciodvfy(path).errors)
    back = hd.seg.Segmentation.from_dataset(dcmread(BytesIO(encode(seg))))
    for item in back.SegmentSequence:
        assert item.SegmentedPropertyTypeCodeSequence[0].CodingSchemeDesignator == "SCT"


def test_a_network_that_cannot_be_built_is_unavailable_at_check_with_the_reason(layouts: Path) -> None:
    registry = ModelRegistry(layouts, torch.device("cpu"))
    status = {st.name: st for st in registry.check()}
    bad = status["swin-unetr-btcv"]
    assert not bad.ready
    assert "network_def" in bad.reason and "img_size" in bad.reason and "MONAI version mismatch" in bad.reason
    assert all(status[name].ready for name in LAYOUTS) and status["ct-basic"].ready
    assert registry.unavailable_reason("swin-unetr-btcv") == bad.reason
    assert registry.unavailable_reason("ct-basic") is None
    assert "no model 'nope'" in (registry.unavailable_reason("nope") or "")


def test_one_hundred_segments_are_coded_with_laterality(layouts: Path, phantom) -> None:
    _, _datasets, volume = phantom
    model = BundleSegmenter(layouts / "json-channel_def-105ch")
    card = model.card
    lung, rib = card.label(15), card.label(58)
    assert (lung.name, lung.type.value, lung.modifier and lung.modifier.meaning) == (
        "Lung upper lobe right", "45653009", "Right")
    assert (rib.type.meaning, rib.modifier and rib.modifier.meaning) == ("First rib", "Left")
    labels = model.predict(volume)
    assert set(np.unique(labels)) <= {0, 5, 15, 58}
