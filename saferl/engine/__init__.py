"""What both training engines share (as Stable-Baselines3's ``common/``).

- :mod:`saferl.engine.config` — the run settings every configuration has, validated once.
- :mod:`saferl.engine.members` — the member axis: today seeds, a member is a seed (and soon its
  cost limits); ``vmap`` over it, sharding across devices, placement, stacked initial states.
- :mod:`saferl.engine.episodes` — episode tracking, the cost-estimate rule, episode metrics and
  the non-finite report.
- :mod:`saferl.engine.host` — the host-collection loop (Bullet, gymnasium) with an actor
  callback, and the one action scaling.
- :mod:`saferl.engine.family` — the interface each engine family (on-policy, off-policy)
  implements; the registry names one per algorithm, so ``training.py`` and ``policy.py`` never
  branch on the family.

The engines themselves, :mod:`saferl.algos.on_policy` and :mod:`saferl.algos.off_policy`, import
only from here (and from ``core/``, ``data/``, ``envs/``); algorithms import their engine.
"""
