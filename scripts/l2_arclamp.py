"""Snakemake script of rule l2_arclamp: see kpfmasters.science.wlsproducts.build_l2."""

from kpfmasters.workflow.jobs import run_l2

run_l2(snakemake)
