"""Simulator task suites (``vla_grpo.envs``): the suite contract in :mod:`.base`, one package per suite.

The MuJoCo suites (``tabletop``, ``bimanual``, ``libero``) stand side by side on
the scene kit :mod:`.scene` and never import one another; :mod:`.registry`
names every suite and imports it when asked.
"""
