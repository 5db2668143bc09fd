"""`segnode models install ct-liver`: fetch pyliverlesionseg 0.3 from PyPI, convert its liver weights.

The wheel (Apache-2.0, KU Leuven) is fetched once with pip into the cache (`$SEGNODE_CACHE`, default
~/.cache/segnode), checked against a pinned sha256, and its Keras HDF5 liver weights are converted to a
torch state dict in `<models dir>/ct-liver/` with the package's LICENSE and a NOTICE. Idempotent: an
installed folder whose weights match its card is left as it is. Nothing here runs at serve time.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from ai.ct_liver.convert import write_model_folder
from ai.ct_liver.model import check_weights, file_sha256
from ai.errors import ModelUnavailable
from node.errors import SegnodeError

logger = logging.getLogger(__name__)

PACKAGE = "pyliverlesionseg"
VERSION = "0.3"
WHEEL = f"{PACKAGE}-{VERSION}-py3-none-any.whl"
WHEEL_SHA256 = "ffe1576aefff5922ea8d1cfa2c50864cda97798798559542b9517689fd290cb8"
HDF5_MEMBER = (f"{PACKAGE}/trained_models/"
               "model_unet_ct_mr_liv_seg_resize_1.5mm_med_3_resize_3mm_20201011_dice_loss_val_binary_dice_mean.hdf5")
LICENSE_MEMBER = f"{PACKAGE}-{VERSION}.dist-info/LICENSE"
MODELS = ("ct-liver",)

NOTICE = f"""ct-liver: whole-liver segmentation for CT

The weights in model.pt are converted, unchanged in value, from the Keras HDF5 file
{HDF5_MEMBER}
of the Python package {PACKAGE}=={VERSION} (PyPI; https://github.com/KUL-recon-lab/pyliverlesionseg),
by Xikai Tang and Georg Schramm, KU Leuven, distributed under the Apache License 2.0 (see LICENSE).
The network was re-implemented in torch for Segnode; no code of the package is used.

Reference: Tang X. et al., Whole liver segmentation based on deep learning and manual adjustment for
clinical use in SIRT. European Journal of Nuclear Medicine and Molecular Imaging 47, 2020.
Wheel sha256: {WHEEL_SHA256}
"""


class InstallError(SegnodeError, RuntimeError):
    """A model could not be fetched or converted; the message says why."""


def cache_dir() -> Path:
    return Path(os.environ.get("SEGNODE_CACHE", Path.home() / ".cache" / "segnode"))


def fetch_wheel(cache: Path | None = None) -> Path:
    """The pinned wheel in the cache, downloaded with pip (from the configured package index) on first use."""
    folder = cache or cache_dir()
    target = folder / WHEEL
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        logger.info("fetching %s==%s with pip", PACKAGE, VERSION)
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                               "--ignore-requires-python", "--only-binary", ":all:", f"{PACKAGE}=={VERSION}",
                               "-d", str(folder)], capture_output=True, text=True)
        if done.returncode != 0 or not target.exists():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise InstallError(f"pip could not download {PACKAGE}=={VERSION}: {tail[0]}")
    digest = file_sha256(target)
    if digest != WHEEL_SHA256:
        target.unlink()
        raise InstallError(f"{WHEEL}: sha256 {digest} is not the pinned {WHEEL_SHA256}; deleted it, "
                           "run the install again")
    return target


def is_installed(folder: Path) -> bool:
    try:
        check_weights(folder)
    except ModelUnavailable:
        return False
    return True


def install_ct_liver(models_dir: Path, cache: Path | None = None, *, force: bool = False) -> Path:
    """Write `<models_dir>/ct-liver` (model.pt, card.json, LICENSE, NOTICE); return the folder."""
    folder = models_dir / "ct-liver"
    if not force and is_installed(folder):
        logger.info("ct-liver already installed in %s", folder)
        return folder
    wheel = fetch_wheel(cache)
    try:
        with zipfile.ZipFile(wheel) as zf, tempfile.TemporaryDirectory() as tmp:
            hdf5 = Path(zf.extract(HDF5_MEMBER, tmp))
            license_text = zf.read(LICENSE_MEMBER).decode()
            (folder / "card.json").unlink(missing_ok=True)          # a half-written folder is never "installed"
            write_model_folder(hdf5, folder, license_text=license_text, notice=NOTICE,
                               source={"package": PACKAGE, "version": VERSION, "file": HDF5_MEMBER,
                                       "wheel_sha256": WHEEL_SHA256, "licence": "Apache-2.0",
                                       "authors": "Xikai Tang, Georg Schramm (KU Leuven)"})
    except (KeyError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise InstallError(f"could not convert the ct-liver weights from {wheel.name}: {exc}") from exc
    logger.info("ct-liver installed in %s", folder)
    return folder


def install(name: str, models_dir: Path, cache: Path | None = None) -> Path:
    if name not in MODELS:
        raise InstallError(f"no installable model {name!r}; known: {', '.join(MODELS)}")
    return install_ct_liver(models_dir, cache)
