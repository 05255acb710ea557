"""Issue 10: remote tracebacks as a user sees them, In[n] labels, cancel() of a finished handle.

The traceback checks run in a real Jupyter kernel (nbclient) and read the text
of the error output, with IPython's colours removed.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from dc_jupyter import compute_this, render

WORKTREE = str(Path(__file__).resolve().parent.parent)


@compute_this
def _double(x):
    return 2 * x


# -- cancel() of a finished handle ------------------------------------------------------


def test_cancel_of_a_finished_handle_changes_nothing(cluster, monkeypatch):
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", cluster.address)
    handle = _double(21).submit()
    assert handle.result(timeout=60) == 42
    assert handle.cancel() is False
    assert handle.status == "finished" and not handle.cancelled()
    assert handle.result() == 42
    state = render.job_state(handle)
    assert state.state == "finished", state
    assert "cancelled" not in render.job_text(state)
