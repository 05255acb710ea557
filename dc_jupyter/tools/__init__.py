"""Tools around the product: a process cluster for tests and benchmarks, the load test."""
