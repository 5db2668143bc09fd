"""Results benchmark: SEG + SR encode for a labelmap with 3 segments, the node's writer (build, encode,
round-trip check) against bare highdicom Segmentation on the same arrays, in the same run.
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

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.ct_basic import CtBasic
from ai.measure import measure
from ai.volume import volume_from_datasets
from bench.common import timed, write_result
from node.results.dicom import encode, round_trip
from node.results.ids import ResultIds
from node.results.seg import build_segmentation, segment_descriptions
from node.results.sr import build_report
from node.synth.phantom import make_phantom
from node.synth.series import phantom_datasets


def encode_part(slices: int, rows: int) -> dict[str, float]:
    phantom = make_phantom(slices, rows, seed=0)
    datasets = phantom_datasets(phantom)
    volume = volume_from_datasets(datasets)
    labels = CtBasic().predict(volume)
    by_uid = {d.SOPInstanceUID: d for d in datasets}
    sources = [by_uid[u] for u in volume.source_uids]
    card = CtBasic.card
    ms = measure(labels, volume.voxels, volume.spacing_mm, card)
    ids = ResultIds.for_series("bench", 1, sources[0].SeriesInstanceUID, 1)

    def node_path() -> None:
        seg = build_segmentation(sources, labels, card, ids)
        sr = build_report(seg, sources, ms, card, ids, "bench", 1)
        for kind, ds in (("seg", seg), ("sr", sr)):
            round_trip(encode(ds), kind)

    def bare() -> None:
        seg = hd.seg.Segmentation(
            source_images=sources, pixel_array=labels, segmentation_type="BINARY",
            segment_descriptions=segment_descriptions(card, [1, 2, 3]), series_instance_uid=ids.seg_series_instance_uid,
            series_number=1, sop_instance_uid=ids.seg_sop_instance_uid, instance_number=1, manufacturer="x",
            manufacturer_model_name="x", software_versions="x", device_serial_number="x")
        buf = BytesIO()
        seg.save_as(buf)
    _, t_node = timed(node_path)
    _, t_bare = timed(bare)
    return {"node_seg_sr_encode_s": t_node, "bare_highdicom_seg_s": t_bare, "ratio": t_node / t_bare}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rows", type=int, default=512)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    enc = encode_part(args.slices, args.rows)
    print(f"encode {args.slices}x{args.rows}x{args.rows}: node SEG+SR {enc['node_seg_sr_encode_s']:.2f} s, "
          f"bare highdicom SEG {enc['bare_highdicom_seg_s']:.2f} s, ratio {enc['ratio']:.2f}")
    print("wrote", write_result("results", {"encode": enc}))


if __name__ == "__main__":
    main()
