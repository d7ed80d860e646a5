"""The scaling benchmark behind docs/benchmarks.md: `bench` runs stock splatfacto and
splatfacto-dist as their own processes (`bench_stock`: stock with LPIPS stubbed, `lpips_stub`),
reading the ranks' records; `bench_report` turns results into tables and plots."""
