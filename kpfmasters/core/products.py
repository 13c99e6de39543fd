"""The table of product types: what each master *is*, in one place.

Every other module asks this table instead of keeping its own copy: selection (which masters
exist, in which order, whose frames are divided by exposure time), planning (predecessors),
master assembly (IMTYPE, units, INP* keywords, the post-stack step), the database (level,
caltype) and the summaries. A new product type is one row here plus its rule file.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProductType:
    """One kind of product.

    Attributes
    ----------
    name : str
        Type name used in file names and the database caltype (``bias``, ``arclamp``).
    imtype : str
        PRIMARY ``IMTYPE`` written into the product (``Bias``, ``Arclamp``).
    units : tuple of str
        ``BUNIT`` of the GREEN_CCD/RED_CCD images and of CA_HK (which stays in DN).
    predecessors : tuple of str
        Master types the frames are calibrated with, in the order they are applied.
    per_second : bool
        Whether each frame is divided by its EXPTIME before stacking (units per second).
    input_key : str or None
        PRIMARY keyword that records this master when another master uses it
        (``INPBIAS``); None when no other master uses it.
    level : int
        Database level: 0 for 2D masters.
    per_object : bool
        One product per distinct OBJECT value (arclamps), tagged in the file name.
    post_stack : str or None
        Name of the step applied to each stacked CCD before assembly
        (``normalize_flat``); None for none.
    extra_images : tuple of str
        Suffixes of additional per-CCD float32 images written after the UNC/CNT pairs
        (the flat's ``STACK`` and ``LAMP``).
    """

    name: str
    imtype: str
    units: tuple[str, str]
    predecessors: tuple[str, ...] = ()
    per_second: bool = False
    input_key: str | None = None
    level: int = 0
    per_object: bool = False
    post_stack: str | None = None
    extra_images: tuple[str, ...] = ()


BIAS = ProductType("bias", "Bias", ("electrons", "DN"), input_key="INPBIAS")
DARK = ProductType(
    "dark",
    "Dark",
    ("electrons/sec", "DN/sec"),
    predecessors=("bias",),
    per_second=True,
    input_key="INPDARK",
)
FLAT = ProductType(
    "flat",
    "Flat",
    ("dimensionless", "dimensionless"),
    predecessors=("bias", "dark"),
    per_second=True,
    input_key="INPFLAT",
    post_stack="normalize_flat",
    extra_images=("STACK", "LAMP"),
)
ARCLAMP = ProductType(
    "arclamp",
    "Arclamp",
    ("electrons/sec", "DN/sec"),
    predecessors=("bias", "dark", "flat"),
    per_second=True,
    per_object=True,
)

#: The 2D master types, in build order (each after its predecessors).
MASTERS: dict[str, ProductType] = {p.name: p for p in (BIAS, DARK, FLAT, ARCLAMP)}
#: Their names, in build order.
MASTER_TYPES: tuple[str, ...] = tuple(MASTERS)


def product(name: str) -> ProductType:
    """The row of the table for one product type.

    Parameters
    ----------
    name : str
        Type name (``bias``, ``dark``, ``flat``, ``arclamp``).

    Returns
    -------
    ProductType
        Its row of :data:`MASTERS`.

    Raises
    ------
    ValueError
        Naming the unknown type and the known ones.
    """
    try:
        return MASTERS[name]
    except KeyError:
        raise ValueError(f"unknown master type {name!r}; expected one of {MASTER_TYPES}") from None


def used_as_predecessor() -> tuple[str, ...]:
    """Master types some other master is calibrated with.

    Returns
    -------
    tuple of str
        In build order: ``("bias", "dark", "flat")`` with today's table.
    """
    return tuple(n for n in MASTER_TYPES if any(n in p.predecessors for p in MASTERS.values()))
