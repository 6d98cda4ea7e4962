"""Simulator task suites (``vla_grpo.envs``): the suite contract in :mod:`.base`, one package per suite."""
