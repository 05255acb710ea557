"""Views of work in progress: live ipywidgets, text/HTML snapshots, a terminal bar.

Reads the public state of futures only; the core never imports this package.
"""
