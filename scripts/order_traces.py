"""Snakemake script of rule order_traces: see kpfmasters.science.traces.build_traces."""

from kpfmasters.workflow.jobs import run_traces

run_traces(snakemake)
