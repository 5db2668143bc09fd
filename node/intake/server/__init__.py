"""The association server: the DICOM port, one thread per association."""
