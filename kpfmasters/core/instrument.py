"""KPF's detectors as the products name them: CCDs, image extensions and their bits.

Attributes
----------
CCDS : tuple of str
    The two science CCDs as L0 amplifier extensions name them (``GREEN_AMP1``...).
CCD_EXTS : tuple of str
    Image extensions of 2D files and masters, in file order.
SCIENCE_EXTS : tuple of str
    The science CCD images (``CA_HK`` excluded): what order masks and traces cover.
CCD_BIT : dict
    Bit number of each extension in INFOBITS and in the database's ``contentbits``
    (0 GREEN_CCD, 1 RED_CCD, 2 CA_HK).
"""

from __future__ import annotations

CCDS = ("GREEN", "RED")
CCD_EXTS = ("GREEN_CCD", "RED_CCD", "CA_HK")
SCIENCE_EXTS = ("GREEN_CCD", "RED_CCD")
CCD_BIT = {"GREEN_CCD": 0, "RED_CCD": 1, "CA_HK": 2}
