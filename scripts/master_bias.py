"""Snakemake script of rule master_bias: see kpfmasters.masters.build_master."""

from kpfmasters.jobs import run_master

run_master(snakemake, "bias")
