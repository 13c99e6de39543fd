"""The only code that knows Snakemake or subprocesses: job glue and launching Snakemake.

May import every layer below it (plan, qa, science, io, core, db).
"""
