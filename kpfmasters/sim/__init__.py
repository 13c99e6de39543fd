"""The simulator of KPF L0 nights and its saved truth (for tests, benchmarks and the demo).

May import :mod:`kpfmasters.io` and :mod:`kpfmasters.core`.
"""
