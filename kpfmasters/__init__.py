"""kpf-masters: master calibration files (bias, dark, flat, arclamp) for the Keck Planet Finder.

The science lives in small modules of plain functions on arrays and headers; I/O and
orchestration sit at the edges (Snakemake rules, the thin scripts in ``scripts/``, and the
``kpfmasters`` command line).
"""

__version__ = "0.1.0"
