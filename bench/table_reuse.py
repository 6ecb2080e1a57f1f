"""Temporary: table_reuse is an experiment and lives in experiments/table_reuse.py
(python -m experiments.table_reuse). This name stays only while tests/test_bench.py imports it
from bench/; remove it together with that test (tests/test_table_reuse.py holds its copy)."""
from experiments.table_reuse import main, reuse_report, scope_stats  # noqa: F401
