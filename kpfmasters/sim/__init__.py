"""The simulator: KPF nights with known truth."""
