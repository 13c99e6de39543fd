"""Snakemake script of rule l1_master: see kpfmasters.science.l1.build_l1."""

from kpfmasters.workflow.jobs import run_l1

run_l1(snakemake)
