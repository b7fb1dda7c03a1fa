"""Our batched locomotion tasks against gymnasium's v5 envs, from the same state and actions."""

import gymnasium as gym
import numpy as np
import pytest
import torch

from embodied.envs import make_env

GYM_IDS = {"hopper": "Hopper-v5", "walker2d": "Walker2d-v5", "halfcheetah": "HalfCheetah-v5",
           "ant": "Ant-v5"}


CASES = [("hopper", {}), ("walker2d", {}), ("halfcheetah", {}),
         ("ant", {"contact_forces": "gymnasium"}), ("ant", {"contact_forces": "in_step"})]


@pytest.mark.parametrize(("task", "options"), CASES, ids=[f"{t}-{o}" for t, o in CASES])
def test_matches_gymnasium_v5(task, options):
    num_envs, steps = 3, 150
    ours = make_env(task, num_envs=num_envs, nthread=1, **options)
    # Ant "in_step" takes contact forces from inside the step: everything else must be
    # bit-equal; the contact block (obs[27:]) and the contact cost (< 0.04) may differ.
    exact = options.get("contact_forces") != "in_step"
    dims = slice(None) if exact else slice(0, 27)
    reward_tol = 1e-5 if exact else 0.04
    obs = ours.reset(seed=0)["state"].numpy()
    refs = [gym.make(GYM_IDS[task]).unwrapped for _ in range(num_envs)]
    qpos, qvel = ours.sim.field("qpos").numpy(), ours.sim.field("qvel").numpy()
    for i, ref in enumerate(refs):
        ref.reset(seed=i)
        ref.set_state(qpos[i].copy(), qvel[i].copy())  # our reset distribution's sample
        np.testing.assert_allclose(ref._get_obs()[dims], obs[i][dims], rtol=1e-5, atol=1e-5)

    rng = np.random.default_rng(0)
    alive = np.ones(num_envs, dtype=bool)
    compared = 0
    for _ in range(steps):
        actions = rng.uniform(-1, 1, size=(num_envs, ours.action_dim))
        obs, reward, terminated, truncated, info = ours.step(torch.as_tensor(actions))
        for i, ref in enumerate(refs):
            if not alive[i]:
                continue
            ref_obs, ref_reward, ref_term, _, _ = ref.step(actions[i])
            final = info["final_obs"]["state"][i] if terminated[i] else obs["state"][i]
            np.testing.assert_allclose(final.numpy()[dims], ref_obs[dims], rtol=1e-5, atol=1e-4)
            assert reward[i].item() == pytest.approx(ref_reward, rel=1e-5, abs=reward_tol)
            assert bool(terminated[i]) == ref_term
            compared += 1
            alive[i] = not ref_term
    assert compared >= 60  # the comparison really ran (random actions topple hoppers early)
