"""Science on arrays: stacking, masters, order traces, extraction and L1 spectra."""
