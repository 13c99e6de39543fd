"""The science on arrays and headers: L0 -> 2D, the clipped stack, the flat, master assembly.

May import :mod:`kpfmasters.io` and :mod:`kpfmasters.core`, nothing above.
"""
