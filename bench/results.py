"""Results benchmark, two parts, each against a reference measured in the same run:

1. SEG + SR encode for a labelmap with 3 segments: the node's writer (build, encode, round-trip check)
   against bare highdicom Segmentation on the same arrays.
2. End to end: a study sent with storescu to Segnode until its SEG and SR are stored in a real Orthanc,
   against bare ct-basic inference on the same volume (the quiet period is subtracted and reported).

  python bench/results.py                          # 300 x 512 x 512 encode, 100 x 256 x 256 end to end
  python bench/results.py --slices 100 --rows 256  # quicker encode
Writes bench/out/results.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import warnings
from io import BytesIO
from pathlib import Path

import highdicom as hd

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ai.ct_basic import CtBasic
from ai.measure import measure
from ai.volume import volume_from_datasets
from bench.common import timed, write_result
from node.dicom_out.ids import ResultIds
from node.dicom_out.seg import build_segmentation, segment_descriptions
from node.dicom_out.sr import build_report
from node.dicom_out.writer import encode, round_trip
from node.synth.phantom import make_phantom
from node.synth.series import phantom_datasets, write_datasets
from tests.e2e.dcmtk import storescu
from tests.e2e.node_process import NodeProcess
from tests.e2e.orthanc import OrthancProcess
from tests.helpers import wait_until

QUIET_S = 1.0


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


def e2e_part(slices: int, rows: int, workdir: Path) -> dict[str, float]:
    phantom = make_phantom(slices, rows, seed=1)
    datasets = phantom_datasets(phantom)
    paths = write_datasets(workdir / "ct", datasets)
    _, t_infer = timed(lambda: CtBasic().predict(volume_from_datasets(datasets)))
    orthanc = OrthancProcess(workdir / "orthanc")
    config = (f"[[destinations]]\nname = \"pacs\"\nkind = \"dicom\"\nhost = \"127.0.0.1\"\n"
              f"port = {orthanc.dicom_port}\n"
              f"ae_title = \"ORTHANC\"\n\n[[rules]]\nname = \"ct\"\nmodel = \"ct-basic\"\ndestinations = [\"pacs\"]\n")
    node = NodeProcess(workdir / "node", config, dicom__study_quiet_period_s=str(QUIET_S), node__log_level="WARNING")
    try:
        orthanc.start()
        node.start()
        t0 = time.perf_counter()
        assert storescu(node.dicom_port, paths).returncode == 0
        t_sent = time.perf_counter() - t0
        wait_until(lambda: orthanc.instances_of_modality("SR"), 600, "results in Orthanc", interval_s=0.1)
        total = time.perf_counter() - t0
    finally:
        node.stop()
        orthanc.stop()
    return {"send_s": t_sent, "study_to_results_in_orthanc_s": total, "quiet_period_s": QUIET_S,
            "bare_inference_s": t_infer, "ratio_excluding_quiet_period": (total - QUIET_S) / t_infer}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=300)
    ap.add_argument("--rows", type=int, default=512)
    ap.add_argument("--e2e-slices", type=int, default=100)
    ap.add_argument("--e2e-rows", type=int, default=256)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    enc = encode_part(args.slices, args.rows)
    print(f"encode {args.slices}x{args.rows}x{args.rows}: node SEG+SR {enc['node_seg_sr_encode_s']:.2f} s, "
          f"bare highdicom SEG {enc['bare_highdicom_seg_s']:.2f} s, ratio {enc['ratio']:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        e2e = e2e_part(args.e2e_slices, args.e2e_rows, Path(tmp))
    print(f"end to end {args.e2e_slices}x{args.e2e_rows}x{args.e2e_rows}: {e2e['study_to_results_in_orthanc_s']:.2f} s "
          f"(quiet period {QUIET_S} s) vs bare inference {e2e['bare_inference_s']:.2f} s, "
          f"ratio {e2e['ratio_excluding_quiet_period']:.2f}")
    print("wrote", write_result("results", {"encode": enc, "end_to_end": e2e}))


if __name__ == "__main__":
    main()
