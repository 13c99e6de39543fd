"""Snakemake script of rule master_flat: see kpfmasters.masters.build_master."""

from kpfmasters.jobs import run_master

run_master(snakemake, "flat")
