"""Whole studies: sweeps of runs (:mod:`~saferl.experiments.spec`,
:mod:`~saferl.experiments.sweep`, one process per run: :mod:`~saferl.experiments.worker`)."""
