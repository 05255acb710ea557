"""``python -m dc_jupyter.loadtest``: the load test's command line (see ``tools.loadtest``)."""

from dc_jupyter.tools.loadtest.run import main

if __name__ == "__main__":
    raise SystemExit(main())
