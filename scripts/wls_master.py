"""Snakemake script of rule wls_master: see kpfmasters.science.wlsproducts.build_wls."""

from kpfmasters.workflow.jobs import run_wls

run_wls(snakemake)
