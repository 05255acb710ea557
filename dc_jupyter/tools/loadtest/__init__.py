"""The load test: ``python -m dc_jupyter.loadtest`` (see ``run``) and its plots."""

from dc_jupyter.tools.loadtest.run import LoadTestConfig, LoadTestResult, main, run_load_test

__all__ = ["LoadTestConfig", "LoadTestResult", "main", "run_load_test"]
