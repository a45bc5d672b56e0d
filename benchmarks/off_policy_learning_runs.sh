#!/bin/bash
# Off-policy learning runs on Bullet (issue 4 evidence): cvpo and sac_lag with FSRL's BallCircle settings
# (see fsrl_comparison.py), 150k steps, seed 0, on SafetyCarCircle-v0 and SafetyBallCircle-v0.
cd /work/main/benchmarks
PY=/work/venv/bin/python
CVPO='{"run": {"update_ratio": 0.2, "batch_size": 256, "hidden_sizes": [128, 128], "gamma": 0.97, "tau": 0.05, "n_step": 2, "actor_lr": 5e-4, "critic_lr": 1e-3, "warmup_steps": 0, "buffer_size": 200000}, "cvpo": {"num_samples": 16, "estep_kl": 0.02, "max_multiplier": 20.0, "kl_mean": 0.005, "kl_std": 0.0005, "mstep_iterations": 1, "twin_critics": false}}'
SAC='{"run": {"update_ratio": 0.2, "batch_size": 256, "hidden_sizes": [128, 128], "gamma": 0.97, "tau": 0.05, "n_step": 2, "actor_lr": 5e-4, "critic_lr": 1e-3, "warmup_steps": 0, "buffer_size": 100000}, "sac": {"init_alpha": 0.005}, "lagrange": {"method": "pid", "kp": 0.05, "ki": 0.0005, "kd": 0.1}}'
for env in SafetyCarCircle-v0 SafetyBallCircle-v0; do
  case $env in SafetyCarCircle-v0) T=300;; *) T=200;; esac
  $PY bullet_learning.py --algo cvpo --env $env --steps 150000 --num-envs 10 --rollout-steps $T --overrides "$CVPO" > out/learning_cvpo_$env.log 2>&1
  $PY bullet_learning.py --algo sac_lag --env $env --steps 150000 --num-envs 2 --rollout-steps $T --overrides "$SAC" > out/learning_sac_lag_$env.log 2>&1
done
echo done > out/learning_runs.done
