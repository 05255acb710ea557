"""The Dask backend: finding and connecting to a cluster, versions, installing worker code."""
