#!/usr/bin/env bash
# Full-size night benchmark: simulate a KPF night at 4080 x 4080 per CCD (about 20 biases,
# 5 darks, 30 flats, ThAr and LFC arclamps of 8 frames; KPF's trace geometry and encoding)
# and time `snakemake --cores 2` on it through all four daily steps (2D masters, order traces
# and L1, wavelength solutions and L2; registration is off): steps 1-2 as one run, then the
# rest. Prints total wall time, time
# per rule and peak RSS per job (from Snakemake's benchmark files) and appends the table to
# bench/RESULTS.md.
#
#   bash bench/night.sh [WORKDIR]        (default /tmp/kpf-night-bench; needs ~25 GB free)
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=${1:-/tmp/kpf-night-bench}
py=${PYTHON:-$repo/.venv/bin/python}
date=20230606
mkdir -p "$work"

if [ ! -f "$work/sim/truth/$date/frames.json" ]; then
    echo "simulating a full-size night in $work/sim ..."
    /usr/bin/time -f "simulation: %e s, peak RSS %M KiB" "$py" -m kpfmasters.cli simulate \
        --date $date --out "$work/sim" --size full --seed 1 \
        --counts bias=20,dark=5,flat=30,arclamp:autocal-thar-all-morn=8,arclamp:autocal-lfc-all-morn=8
fi
# the simulator's reference wavelength solution is the night's prior (wls.reference), and
# its ThAr catalogue (the lamp's lines with 3 m/s errors and spurious entries) the line list
printf 'wls:\n  reference: %s\n  thar_linelist: %s\n' "$work/sim/wls_reference.fits" \
    "$work/sim/thar_linelist.txt" > "$work/night.config.yaml"
rm -rf "$work/work" "$work/masters" "$work/.snakemake"
run() {
    "$py" -m snakemake -s "$repo/Snakefile" -d "$work" "$@" --cores 2 --quiet rules \
        --configfile "$work/night.config.yaml" \
        --config date=$date l0_root="$work/sim/L0" work_root="$work/work" \
        masters_root="$work/masters" order_mask="$work/sim/order_mask.fits"
}
# Steps 1 and 2 first (the 2D masters, the traces and every master's L1), then the rest
# (wavelength solutions, L2, QA): both walls are reported.
m="$work/masters/$date/kpf_${date}_master"
steps12=("${m}_flat_GREEN_CCD.csv" "${m}_flat_RED_CCD.csv")
for kind in bias dark flat arclamp_autocal-thar-all-morn arclamp_autocal-lfc-all-morn; do
    steps12+=("${m}_${kind}_L1.fits")
done
start=$(date +%s.%N)
run "${steps12[@]}" > "$work/run.log" 2>&1
mid=$(date +%s.%N)
run >> "$work/run.log" 2>&1
end=$(date +%s.%N)
"$py" "$repo/bench/night_report.py" "$work/work/benchmarks/$date" \
    --wall "$(echo "$end - $start" | bc)" --wall-steps12 "$(echo "$mid - $start" | bc)" \
    --append "$repo/bench/RESULTS.md"
