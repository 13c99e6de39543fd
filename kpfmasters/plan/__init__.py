"""Planning a night: header index, selection, rejects, predecessors, the plans rules ask.

May import :mod:`kpfmasters.science`, :mod:`kpfmasters.db`, :mod:`kpfmasters.io` and
:mod:`kpfmasters.core`; never Snakemake or :mod:`kpfmasters.workflow`.
"""
