"""What the workers run. Standard library and cloudpickle only.

Workers do not have dc_jupyter installed: these modules are shipped by value
(cloudpickle) or installed from their source by a Dask plugin, so they must not
import anything from dc_jupyter.
"""
