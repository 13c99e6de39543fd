# kpf-masters: one night (or many) of KPF L0 frames -> master bias, dark, flat, arclamps.
#
#   snakemake --cores 2 --config date=20230606 l0_root=... work_root=... masters_root=...
#   snakemake --profile profiles/slurm --config dates=20230601..20230630
#
# Every master is a file target; the default target builds every master of the night(s).
from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config.yaml"


include: "rules/common.smk"
include: "rules/l0_to_2d.smk"
include: "rules/bias.smk"
include: "rules/dark.smk"
include: "rules/flat.smk"
include: "rules/arclamp.smk"
include: "rules/traces.smk"
include: "rules/l1.smk"
include: "rules/wls.smk"
include: "rules/l2.smk"
include: "rules/night.smk"
include: "rules/qa.smk"


rule all:
    default_target: True
    input:
        all_targets(),
        qa_targets(),
        l1_qa_targets(),
        wls_qa_targets(),
