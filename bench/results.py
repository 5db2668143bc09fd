"""Results benchmark: SEG + SR encode for label maps with 3 and 104 segments, the node's writer (build, encode,
the checks on the encoded bytes) against bare highdicom Segmentation on the same arrays, in the same run.
(Study to results stored in Orthanc is bench/e2e.py.)

  python bench/results.py                          # 300 x 512 x 512
  python bench/results.py --slices 100 --rows 256  # quicker
Writes bench/out/results.json.
"""

from __future__ import annotations

import argparse
import sys
import warnings
from io import BytesIO
from pathlib import Path

import highdicom as hd
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.anatomy import code_label
from ai.bundle_files import display_name
from ai.ct_basic import CtBasic
from ai.measure import measure
from ai.segmenter import LabelSpec, ModelCard
from ai.volume import volume_from_datasets
from bench.common import timed, write_result
from node.results.dicom import encode, encode_checked
from node.results.ids import ResultIds
from node.results.seg import build_segmentation, present_labels, segment_descriptions
from node.results.sr import build_report
from node.synth.phantom import make_phantom
from node.synth.series import phantom_datasets
from tests.builders.bundle_layouts import WHOLE_BODY_LABELS


def whole_body_card() -> ModelCard:
    """The 104 labels of the model zoo's wholeBody_ct_segmentation bundle, coded by the node's dictionary."""
    labels = []
    for number, name in enumerate(WHOLE_BODY_LABELS[1:], start=1):
        coded = code_label(name)
        labels.append(LabelSpec(number, display_name(name), coded.category, coded.type, coded.modifier))
    return ModelCard(name="wholeBody_ct_segmentation", version="0.1.9", description="104 structures",
                     modalities=("CT",), labels=tuple(labels))


def blocks_labelmap(body: np.ndarray, n_labels: int) -> np.ndarray:
    """Inside the body, 104 labels as blocks of ~24 x 48 x 48 voxels: every label present, like a whole-body CT."""
    z, y, x = np.indices(body.shape, sparse=True)
    block = (z // 24) * 121 + (y // 48) * 11 + (x // 48)
    return np.where(body, (block % n_labels) + 1, 0).astype(np.uint8)


def encode_part(slices: int, rows: int, n_labels: int = 3, repeat: int = 2) -> dict[str, float]:
    phantom = make_phantom(slices, rows, seed=0)
    datasets = phantom_datasets(phantom)
    volume = volume_from_datasets(datasets)
    labels = CtBasic().predict(volume)
    by_uid = {d.SOPInstanceUID: d for d in datasets}
    sources = [by_uid[u] for u in volume.source_uids]
    card = CtBasic.card
    if n_labels > 3:
        card = whole_body_card()
        labels = blocks_labelmap(labels > 0, n_labels)
    ms = measure(labels, volume.voxels, volume.spacing_mm, card)
    ids = ResultIds.for_series("bench", 1, sources[0].SeriesInstanceUID, 1)

    def node_path() -> None:
        seg = build_segmentation(sources, labels, card, ids)
        sr = build_report(seg, sources, ms, card, ids, "bench", 1)
        encode_checked(seg, sr, str(sources[0].SeriesInstanceUID), len(ms))

    def bare() -> None:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=labels, segmentation_type="BINARY",
            segment_descriptions=segment_descriptions(card, numbers), series_instance_uid=ids.seg_series_instance_uid,
            series_number=1, sop_instance_uid=ids.seg_sop_instance_uid, instance_number=1, manufacturer="x",
            manufacturer_model_name="x", software_versions="x", device_serial_number="x")
        buf = BytesIO()
        seg.save_as(buf)
    def node_seg() -> None:
        encode(build_segmentation(sources, labels, card, ids))

    present = present_labels(labels, card)
    numbers = [lb.number for lb in card.labels]
    bare()                                    # warm-up: the first highdicom call pays imports and caches
    t_bare = t_seg = t_node = float("inf")
    for _ in range(repeat):                   # interleaved, best of `repeat`: the machine is shared
        t_bare = min(t_bare, timed(bare)[1])
        t_seg = min(t_seg, timed(node_seg)[1])
        t_node = min(t_node, timed(node_path)[1])
    return {"labels": len(present), "node_seg_sr_encode_s": t_node, "node_seg_encode_s": t_seg,
            "bare_highdicom_seg_s": t_bare, "ratio": t_node / t_bare, "seg_ratio": t_seg / t_bare}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--labels", type=int, default=104, help="also run a case with this many labels (0: skip)")
    ap.add_argument("--repeat", type=int, default=2, help="interleaved runs of each path; the best counts")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    out = {}
    for n in (3, args.labels) if args.labels else (3,):
        enc = encode_part(args.slices, args.rows, n, args.repeat)
        print(f"encode {args.slices}x{args.rows}x{args.rows}, {enc['labels']} segments: node SEG "
              f"{enc['node_seg_encode_s']:.2f} s ({enc['seg_ratio']:.2f}x), node SEG+SR+checks "
              f"{enc['node_seg_sr_encode_s']:.2f} s ({enc['ratio']:.2f}x); bare highdicom SEG "
              f"{enc['bare_highdicom_seg_s']:.2f} s")
        out[f"encode_{n}_labels"] = enc
    print("wrote", write_result("results", out))


if __name__ == "__main__":
    main()
