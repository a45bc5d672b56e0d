"""Algorithms: the on- and off-policy engines, each algorithm as pure functions, the registry."""
