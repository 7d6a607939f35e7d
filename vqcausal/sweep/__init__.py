"""Sweeps: many ordinary training runs (cells), run on Ray, collected into tables and figures.

Layers, each importing only those above it::

    spec      what a size and a dataset mean
    plan      cells and the planner
    cells     one cell's folder and the commands that bring it to done
    engine    cells as Ray tasks, locally or on a cluster
    results   one row per evaluated cell
    tables    summaries over seeds, results.md / .csv, figures
    command   ``vqcausal ablate``        tune: ``vqcausal tune`` (Ray Tune)
"""
