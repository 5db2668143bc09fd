"""DICOM SEG from a label map, with highdicom: one segment per label, coded, referencing the source."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from ai import slabs
from ai.anatomy import LOCAL_SCHEME, LOCAL_SCHEME_NAME
from ai.segmenter import ModelCard
from node.results.ids import MANUFACTURER, SOFTWARE_VERSION, ResultIds


def segment_descriptions(card: ModelCard, numbers: Sequence[int]) -> list[hd.seg.SegmentDescription]:
    out = []
    for number in numbers:
        label = card.label(number)
        out.append(hd.seg.SegmentDescription(
            segment_number=label.number, segment_label=label.name,
            segmented_property_category=label.category, segmented_property_type=label.type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=card.name, family=codes.DCM.ArtificialIntelligence, version=card.version)))
        if label.modifier is not None:       # laterality: a modifier of the type, as CID 7150/7151 code it
            out[-1].SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(label.modifier.value, label.modifier.scheme_designator, label.modifier.meaning)]
    return out


def declare_local_scheme(ds: Dataset, card: ModelCard) -> None:
    """Name the node's private coding scheme (PS3.3 C.12.1.1.4) when any label of `card` uses it."""
    if any(LOCAL_SCHEME in (lb.type.scheme_designator, lb.category.scheme_designator) for lb in card.labels):
        item = Dataset()
        item.CodingSchemeDesignator = LOCAL_SCHEME
        item.CodingSchemeName = LOCAL_SCHEME_NAME
        item.CodingSchemeResponsibleOrganization = "Segnode"
        ds.CodingSchemeIdentificationSequence = [item]


def present_labels(labels: np.ndarray, card: ModelCard) -> list[int]:
    """The card's label numbers that occur in `labels`, in card order (one pass over the volume, in slabs:
    bincount of a whole volume would first copy it as int64, 8x a uint8 label map)."""
    counts = slabs.counts(labels, 255)
    return [lb.number for lb in card.labels if lb.number < counts.size and counts[lb.number]]


def build_segmentation(sources: Sequence[Dataset], labels: np.ndarray, card: ModelCard, ids: ResultIds,
                       frame_numbers: Sequence[int] = (), fractional: bool = False) -> hd.seg.Segmentation:
    """`labels` has axes (slice, row, column) in the order of `sources` (single-frame), or of
    `frame_numbers` (1-based) for one multi-frame source. Segments are renumbered 1..N in label order,
    as the standard requires; absent labels get no segment."""
    present = present_labels(labels, card)
    if not present:
        raise ValueError("the label map is empty: there is nothing to encode")
    if frame_numbers:
        ordered = np.zeros_like(labels)
        for k, frame in enumerate(frame_numbers):
            ordered[frame - 1] = labels[k]
        labels = ordered
    # SEG segment numbers must run 1..N; keep the card's label order (a pass over the volume only if they do not)
    pixel_array = labels
    if present != list(range(1, len(present) + 1)):
        remap = np.zeros(256, np.uint8)
        for i, number in enumerate(present, start=1):
            remap[number] = i
        pixel_array = remap[labels]
    descriptions = segment_descriptions(card, present)
    for i, d in enumerate(descriptions, start=1):
        d.SegmentNumber = i
    if fractional:
        pixel_array = np.stack([(pixel_array == i) for i in range(1, len(present) + 1)], axis=-1).astype(np.float32)
    return _segmentation(sources, pixel_array, fractional, descriptions, ids, card)


def _segmentation(sources: Sequence[Dataset], pixel_array: np.ndarray, fractional: bool,
                  descriptions: list[hd.seg.SegmentDescription], ids: ResultIds,
                  card: ModelCard) -> hd.seg.Segmentation:
    seg = hd.seg.Segmentation(
        source_images=list(sources), pixel_array=pixel_array,
        segmentation_type=(hd.seg.SegmentationTypeValues.FRACTIONAL if fractional
                           else hd.seg.SegmentationTypeValues.BINARY),
        segment_descriptions=descriptions, series_instance_uid=ids.seg_series_instance_uid,
        series_number=ids.seg_series_number, sop_instance_uid=ids.seg_sop_instance_uid, instance_number=1,
        manufacturer=MANUFACTURER, manufacturer_model_name=f"{card.name} {card.version}"[:64],
        software_versions=SOFTWARE_VERSION, device_serial_number="0",
        content_label="SEGNODE", content_description=f"{card.name} segmentation"[:64])
    seg.SeriesDescription = f"Segnode {card.name} segmentation"[:64]
    declare_local_scheme(seg, card)
    return seg
