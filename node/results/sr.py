"""DICOM SR: a Comprehensive 3D SR holding a TID 1500 Measurement Report, one group per SEG segment."""

from __future__ import annotations

from collections.abc import Sequence

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code

from ai.measure import SegmentMeasurement
from ai.segmenter import ModelCard
from node.results.ids import MANUFACTURER, ResultIds, result_uid
from node.results.seg import declare_local_scheme

MILLILITER = Code("ml", "UCUM", "milliliter")          # pydicom's codes have no UCUM milliliter
_PROCEDURES = {"CT": codes.LN.CTUnspecifiedBodyRegion, "MR": codes.LN.MRIUnspecifiedBodyRegion,
               "PT": codes.LN.PETUnspecifiedBodyRegion}


# What a segment's mean voxel value measures, by the modality of the source series
_MEAN_OF = {"CT": codes.DCM.AttenuationCoefficient, "MR": codes.DCM.MRSignalIntensity,
            "PT": codes.DCM.StandardizedUptakeValue}


def _intensity(card: ModelCard, modality: str) -> tuple[Code, Code]:
    """(quantity, unit) of the mean: Hounsfield units are attenuation whatever the modality tag says."""
    if card.intensity_unit == "HU":
        return codes.DCM.AttenuationCoefficient, codes.UCUM.HounsfieldUnit
    return _MEAN_OF.get(modality, codes.SCT.Mean), Code("1", "UCUM", "no units")


def build_report(seg: hd.seg.Segmentation, sources: Sequence[Dataset], measurements: Sequence[SegmentMeasurement],
                 card: ModelCard, ids: ResultIds, job_id: str, attempt: int) -> hd.sr.Comprehensive3DSR:
    """Per segment: its volume (mL) and mean intensity (HU for CT), referencing the SEG segment and the
    source series; the device observer names the model."""
    source_series_uid = str(sources[0].SeriesInstanceUID)
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=result_uid(card.name, 0, card.version, "device"), name=card.name[:64],
            manufacturer_name=MANUFACTURER, model_name=f"{card.name} {card.version}"[:64]))
    quantity, unit = _intensity(card, str(sources[0].get("Modality", "")))
    segment_by_label = {str(d.SegmentLabel): int(d.SegmentNumber) for d in seg.SegmentSequence}
    groups = []
    for m in measurements:
        segment_number = segment_by_label[card.label(m.number).name]
        label = card.label(m.number)
        referenced = hd.sr.ReferencedSegment(
            sop_class_uid=seg.SOPClassUID, sop_instance_uid=seg.SOPInstanceUID, segment_number=segment_number,
            source_series=hd.sr.SourceSeriesForSegmentation(source_series_uid))
        values = [
            hd.sr.Measurement(name=codes.SCT.Volume, value=round(m.volume_ml, 3), unit=MILLILITER),
            hd.sr.Measurement(name=quantity, value=round(m.mean, 2), unit=unit, derivation=codes.SCT.Mean),
        ]
        groups.append(hd.sr.VolumetricROIMeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=result_uid(job_id, attempt, source_series_uid, f"tracking-{m.number}"),
                identifier=f"{label.name} ({card.name})"[:64]),
            referenced_segment=referenced, finding_type=label.type, finding_category=label.category,
            finding_sites=([hd.sr.FindingSite(anatomic_location=label.type, laterality=label.modifier)]
                           if label.modifier is not None else None),
            measurements=values))
    modality = str(sources[0].get("Modality", ""))
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=_PROCEDURES.get(modality, codes.SCT.ImagingProcedure),
        imaging_measurements=groups, title=codes.DCM.ImagingMeasurementReport)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[*sources, seg], content=report, series_instance_uid=ids.sr_series_instance_uid,
        series_number=ids.sr_series_number, sop_instance_uid=ids.sr_sop_instance_uid, instance_number=1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=f"Segnode {card.name} measurements"[:64])
    declare_local_scheme(sr, card)
    return sr
