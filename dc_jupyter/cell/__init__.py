"""``%%distribute``: cell analysis, running a cell as a job, its output and its handles."""
