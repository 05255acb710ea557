"""The notebook-side core: decorated functions, lazy jobs and maps, their futures, pickling.

Imports nothing from ``cell``, ``ui`` or ``tools``; backends are reached through
``dc_jupyter.backends.base.Backend``.
"""
