"""Results as DICOM: a highdicom SEG and a TID 1500 Comprehensive 3D SR, validated before they leave."""
