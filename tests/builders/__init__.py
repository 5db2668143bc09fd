"""Data the suite and the benchmarks build: MONAI bundles in each zoo layout, node settings, instance
records, mutated DICOM files, the reference CTs of the TotalSegmentator sdist. Nothing here is a program
the node talks to: those are in tests/peers/ (bench/ may import both on purpose)."""
