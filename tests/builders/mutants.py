"""A seeded mutator of DICOM files for fuzzing the SCP: what a broken scanner or network produces.

The file meta (group 0002) stays intact so a sender can still propose the instance; everything
after it is fair game: bit flips in the header, truncation, inserted bytes, corrupted element
lengths and duplicated chunks.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from pathlib import Path

from pydicom import dcmread


def dataset_offset(data: bytes) -> int:
    """Where the dataset starts, after the preamble and the file meta group."""
    pos = 132
    while pos + 8 <= len(data) and struct.unpack_from("<H", data, pos)[0] == 0x0002:
        vr = data[pos + 4:pos + 6]
        if vr in (b"OB", b"OW", b"OF", b"SQ", b"UT", b"UN"):
            pos += 12 + struct.unpack_from("<L", data, pos + 8)[0]
        else:
            pos += 8 + struct.unpack_from("<H", data, pos + 6)[0]
    return pos


def _pixel_offset(data: bytes, start: int) -> int:
    at = data.find(b"\xe0\x7f\x10\x00", start)
    return at if at > 0 else len(data)


def mutate(data: bytes, rng: random.Random) -> tuple[str, bytes]:
    """One mutant of `data` and the name of what was done to it."""
    start = dataset_offset(data)
    header_end = _pixel_offset(data, start)
    body = bytearray(data)
    kind = rng.choice(["flip", "truncate", "insert", "length", "duplicate"])
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(start, max(start + 1, header_end))
            body[i] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        del body[rng.randrange(start, len(body)):]
    elif kind == "insert":
        i = rng.randrange(start, len(body))
        body[i:i] = rng.randbytes(rng.randint(1, 64))
    elif kind == "length":                         # an element's length field
        tags = [i for i in range(start, header_end - 8, 2) if body[i + 4:i + 6].isalpha()]
        if tags:
            i = rng.choice(tags)
            struct.pack_into("<H", body, i + 6, rng.randrange(0x10000))
    else:
        a = rng.randrange(start, len(body))
        b = min(len(body), a + rng.randint(2, 4096))
        body[b:b] = body[a:b]
    return kind, bytes(body)


def mutants(source: Path, out: Path, count: int, seed: int) -> Iterator[tuple[str, Path]]:
    """`count` mutant files of `source` written under `out`, each under its own SOP Instance UID.

    The UID is swapped byte for byte (same length) in the meta and the dataset, so a mutant is never
    taken for a re-send of another one.
    """
    rng = random.Random(seed)
    data = source.read_bytes()
    sop = str(dcmread(source, stop_before_pixels=True).SOPInstanceUID).encode()
    if len(sop) < 12 or not sop[-6:].isdigit():
        raise ValueError("the source's SOP Instance UID must end in six digits")
    out.mkdir(parents=True, exist_ok=True)
    for n in range(count):
        unique = data.replace(sop, sop[:-6] + f"{n:06d}".encode())
        kind, mutant = mutate(unique, rng)
        path = out / f"mutant-{n:05d}-{kind}.dcm"
        path.write_bytes(mutant)
        yield kind, path


def decodable(path: Path) -> bool:
    """What a receiver promises of anything it acknowledged: pydicom turns it into the declared pixels."""
    try:
        ds = dcmread(path)
        return ds.pixel_array.shape[-2:] == (ds.Rows, ds.Columns)
    except Exception:
        return False
