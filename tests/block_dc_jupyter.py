"""Worker preload: make ``import dc_jupyter`` fail on this worker.

Proves that stock ``dask worker`` processes never need dc_jupyter installed.
"""

import sys

sys.modules["dc_jupyter"] = None  # type: ignore[assignment]  # import now raises ImportError
