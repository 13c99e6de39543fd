"""Every FITS encoding of amplifier pixels reads exactly (unsigned via BZERO, signed, BSCALE,
floats; plain and RICE): the same physical values give bit-identical 2D files.

The L0 files are written with astropy the way other FITS writers store each type (astropy
chooses BITPIX/BZERO for unsigned arrays, :meth:`ImageHDU.scale` for BSCALE), read back
with astropy to check the stored encoding, then converted.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from kpfmasters.core.errors import InputError
from kpfmasters.science.l0to2d import AmpGeometry, convert_l0

GEO = AmpGeometry(
    prescan=3,
    serial_overscan=12,
    parallel_overscan=5,
    edge_skip=2,
    nsigma=2.1,
    flip_2amp=("GREEN",),
    flip_4amp=(),
)
NROWS, NCOLS = 25, 3 + 16 + 12
GAINS = (1.5, 2.0, 0.75, 1.25)
SAT_DN = 65535


def physical_amps(seed: int, namps: int, scale: int) -> list[np.ndarray]:
    """Stored-orientation amplifier values (int64) = DN * ``scale``, DN integers 0..65535.

    Data pixels spread over the whole 16-bit range (one saturated pixel per amplifier at
    65535 DN); the overscan strip sits at a pedestal with a little noise. Every value is
    even, so BSCALE 2 holds it exactly, and has at most 16 significant bits, so float32
    holds it exactly.
    """
    rng = np.random.default_rng(seed)
    amps = []
    for number in range(namps):
        dn = rng.integers(0, SAT_DN // 2, size=(NROWS, NCOLS)) * 2
        pedestal = 1000 + 200 * number
        dn[:, -12:] = pedestal + 2 * rng.integers(-3, 4, size=(NROWS, 12))
        values = dn.astype(np.int64) * scale
        # a saturated pixel: 65535 DN (65534 at scale 1, where BSCALE 2 needs even values)
        values[3, 5] = SAT_DN * scale if scale % 2 == 0 else (SAT_DN - 1) * scale
        amps.append(values)
    return amps


def amp_hdu(values: np.ndarray, encoding: str, compress: bool, name: str):
    """An image HDU storing ``values`` (int64 physical) in ``encoding``."""
    cls = fits.CompImageHDU if compress else fits.ImageHDU
    kwargs = {"compression_type": "RICE_1"} if compress else {}
    if encoding == "int32":
        return cls(values.astype(np.int32), name=name, **kwargs)
    if encoding in ("uint32", "uint32 ZBZERO"):
        return cls(values.astype(np.uint32), name=name, **kwargs)
    if encoding == "uint16":
        return cls(values.astype(np.uint16), name=name, **kwargs)
    if encoding == "int64":
        return cls(values.astype(np.int64), name=name, **kwargs)
    if encoding == "bscale2":
        hdu = cls(values.astype(np.float64), name=name, **kwargs)
        hdu.scale("int32", bscale=2, bzero=0)
        return hdu
    if encoding == "bscale2 bzero":
        hdu = cls(values.astype(np.float64), name=name, **kwargs)
        hdu.scale("int32", bscale=2, bzero=2**31)
        return hdu
    if encoding == "float32":
        if compress:  # lossless: integral values, absolute quantisation step 1, no dither
            kwargs.update(quantize_level=-1, quantize_method=-1)
        return cls(values.astype(np.float32), name=name, **kwargs)
    if encoding == "float64":
        return cls(values.astype(np.float64), name=name, **kwargs)
    raise ValueError(encoding)


STORED = {  # encoding -> (BITPIX, BZERO, BSCALE) as found in the (image) header
    "int32": (32, None, None),
    "uint32": (32, 2**31, 1),
    "uint32 ZBZERO": (32, None, None),
    "uint16": (16, 32768, 1),
    "int64": (64, None, None),
    "bscale2": (32, None, 2),
    "bscale2 bzero": (32, 2**31, 2),
    "float32": (-32, None, None),
    "float64": (-64, None, None),
}


def move_to_zbzero(path: Path) -> None:
    """Rename the compressed tables' BZERO/BSCALE to ZBZERO/ZBSCALE (another writer's way
    of recording the image scaling of a tile-compressed HDU)."""
    with fits.open(path, disable_image_compression=True) as hdul:
        hdus = [fits.PrimaryHDU(header=hdul[0].header)]
        for hdu in hdul[1:]:
            header = hdu.header.copy()
            if "BZERO" in header and header.get("ZIMAGE"):
                header.rename_keyword("BZERO", "ZBZERO")
                header.rename_keyword("BSCALE", "ZBSCALE")
            hdus.append(fits.BinTableHDU(hdu.data, header) if hdu.data is not None else hdu)
        fits.HDUList(hdus).writeto(path.with_suffix(".tmp"))
    path.with_suffix(".tmp").replace(path)


def write_l0(path: Path, amps: list[np.ndarray], encoding: str, compress: bool) -> Path:
    hdus = [fits.PrimaryHDU()]
    hdus[0].header["IMTYPE"] = "Bias"
    hdus[0].header["OBJECT"] = "autocal-bias"
    for ccd in ("GREEN", "RED"):
        for number, values in enumerate(amps, start=1):
            hdu = amp_hdu(values, encoding, compress, f"{ccd}_AMP{number}")
            hdu.header["CCDGAIN"] = GAINS[number - 1]
            hdus.append(hdu)
    fits.HDUList(hdus).writeto(path)
    if encoding == "uint32 ZBZERO":
        move_to_zbzero(path)
    return path


def check_stored(path: Path, encoding: str) -> None:
    """The file really holds ``encoding`` (read back with astropy, unscaled)."""
    bitpix, bzero, bscale = STORED[encoding]
    with fits.open(path, do_not_scale_image_data=True) as hdul:
        header = hdul["GREEN_AMP1"].header
        assert header["BITPIX"] == bitpix
        assert header.get("BZERO") == bzero
        assert header.get("BSCALE") == bscale
        if encoding == "uint32 ZBZERO":
            assert header["ZBZERO"] == 2**31 and header["ZBSCALE"] == 1


def two_d_content(path: Path) -> list[tuple]:
    """(name, header cards without checksums, data bytes) of every HDU of a 2D file."""
    out = []
    with fits.open(path) as hdul:
        for hdu in hdul:
            cards = [(c.keyword, c.value) for c in hdu.header.cards]
            cards = [c for c in cards if c[0] not in ("CHECKSUM", "DATASUM")]
            data = None if hdu.data is None else (hdu.data.dtype.str, hdu.data.tobytes())
            out.append((hdu.name, cards, data))
    return out


# 16-bit DN values (adc_scale 1): every encoding holds them.
SMALL_ENCODINGS = ["int32", "uint32", "uint16", "int64", "bscale2", "float32", "float64"]
# KPF's raw DN * 65536 up to 65535 * 65536: beyond int32 and uint16.
KPF_ENCODINGS = ["uint32", "uint32 ZBZERO", "int64", "bscale2 bzero", "float32", "float64"]
NO_RICE = ("int64", "float64")  # RICE codes integers of up to 32 bits (floats quantised)


def cases(encodings, compress_too=True):
    out = []
    for enc in encodings:
        out.append((enc, False))
        if compress_too and enc not in NO_RICE:
            out.append((enc, True))
    return [c for c in out if c != ("uint32 ZBZERO", False)]


@pytest.mark.parametrize(
    "adc_scale, encodings, namps",
    [(1, SMALL_ENCODINGS, 2), (65536, KPF_ENCODINGS, 2), (65536, KPF_ENCODINGS, 4)],
    ids=["16-bit DN", "KPF DN*65536, 2 amps", "KPF DN*65536, 4 amps"],
)
def test_every_encoding_gives_bit_identical_2d(tmp_path, adc_scale, encodings, namps):
    amps = physical_amps(seed=namps + adc_scale, namps=namps, scale=adc_scale)
    results = {}
    for encoding, compress in cases(encodings):
        label = f"{encoding}{' RICE' if compress else ''}"
        slug = label.replace(" ", "_")
        l0 = write_l0(tmp_path / f"KP.20240101.00001.00.{slug}.fits", amps, encoding, compress)
        check_stored(l0, encoding)
        out = tmp_path / f"{slug}_2D.fits"
        convert_l0(l0, out, GEO, adc_scale)
        results[label] = two_d_content(out)
    first, reference = next(iter(results.items()))
    for label, content in results.items():
        assert content == reference, f"{label} differs from {first}"
    # and the values are the physical ones: the saturated pixel (AMP1, RED: not flipped)
    with fits.open(tmp_path / f"{first.replace(' ', '_')}_2D.fits") as hdul:
        red = hdul["RED_CCD"].data
        level = hdul["RED_CCD"].header["OSCANV1"]
    dn = amps[0][3, 5] / adc_scale
    assert dn == (SAT_DN if adc_scale > 1 else SAT_DN - 1)
    assert red[3, 5 - GEO.prescan] == np.float32(dn * GAINS[0] - level)


def test_blank_pixels_become_nan_and_a_blank_in_the_overscan_is_refused(tmp_path):
    """BITPIX 16 unsigned data with BLANK: the undefined pixel is a missing (NaN) pixel of
    the 2D image; one in the overscan strip makes the frame unusable, named."""
    amps = physical_amps(seed=3, namps=2, scale=1)
    blank = -32768  # stored value: physical 0 after BZERO 32768
    path = write_l0(tmp_path / "KP.20240101.00002.00.fits", amps, "uint16", False)
    with fits.open(path, mode="update", do_not_scale_image_data=True) as hdul:
        for hdu in hdul[1:]:
            hdu.header["BLANK"] = blank
            if hdu.name.endswith("AMP1"):
                hdu.data[4, 6] = blank  # a data pixel (stored AMP1 row 4, column 6)
    out = tmp_path / "blank_2D.fits"
    convert_l0(path, out, GEO, 1)
    red = fits.getdata(out, "RED_CCD")
    assert np.isnan(red[4, 6 - GEO.prescan])
    assert np.isfinite(red).sum() == red.size - 1
    with fits.open(path, mode="update", do_not_scale_image_data=True) as hdul:
        hdul["RED_AMP2"].data[2, 5] = blank  # AMP2 is mirrored: stored column 5 is overscan
    with pytest.raises(InputError, match=r"RED_AMP2: NaN/Inf \(or BLANK\) values"):
        convert_l0(path, tmp_path / "refused_2D.fits", GEO, 1)
