"""Quality assessment: per-master records, figures and pages, the night's summary.

May import :mod:`kpfmasters.science`, :mod:`kpfmasters.io` and :mod:`kpfmasters.core`.
"""
