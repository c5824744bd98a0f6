"""RL representations: TACO (Zheng et al. 2023) and CPC (van den Oord et al. 2018) on a DrQ-v2 agent.

``python -m apps.rl --help``; the agent is :mod:`apps.rl.agent`, the replay buffer :mod:`apps.rl.replay`.
"""
