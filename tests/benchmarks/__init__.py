"""Benchmarks: run as scripts (``python -m tests.benchmarks.bench_questions``), never by pytest."""
