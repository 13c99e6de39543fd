"""Snakemake script of rule master_bias: see kpfmasters.science.master.build_master."""

from kpfmasters.workflow.jobs import run_master

run_master(snakemake, "bias")
