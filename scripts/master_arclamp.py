"""Snakemake script of rule master_arclamp: see kpfmasters.science.master.build_master."""

from kpfmasters.workflow.jobs import run_master

run_master(snakemake, "arclamp")
