"""FITS input and output: atomic writes, verification. May import only :mod:`kpfmasters.core`."""
