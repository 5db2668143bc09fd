"""Real peer programs the suite and the benchmarks share (bench/ may import these on purpose): Orthanc,
PostgreSQL, DCMTK, dciodvfy, Ray, OHIF, Chromium, the node as a subprocess and a pynetdicom SCU, with the
free ports, deadlines and tool lookup they need. The data the tests build is in tests/builders/."""
