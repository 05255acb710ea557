"""``python -m dc_jupyter.tools.loadtest``, the same as ``python -m dc_jupyter.loadtest``."""

from dc_jupyter.tools.loadtest.run import main

raise SystemExit(main())
