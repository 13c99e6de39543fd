"""Snakemake script of rule master_dark: see kpfmasters.masters.build_master."""

from kpfmasters.jobs import run_master

run_master(snakemake, "dark")
