"""The wire: PDUs, DIMSE messages and their encoders, the statuses and SOP classes spoken."""
