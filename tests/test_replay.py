"""The replay buffer: n-step and chunk samples against hand computations across
termination, truncation, cuts and the ring's wrap; histories; uint8 images stored once;
saving in pieces and resuming from a manifest; demos from recorded episodes."""

from __future__ import annotations

import pytest
import torch

from embodied.core.errors import ConfigError
from embodied.data.replay import ReplayBuffer

G = 0.9
SPEC = {"state": ((1,), torch.float32)}


def frame(t: int, e: int) -> float:
    return 10.0 * t + e  # a frame names its step and env


def fill(buffer: ReplayBuffer, steps: range, ends: dict[tuple[int, int], str]) -> None:
    """Step t of env e: obs frame(t, e), action [t, e], reward t + e / 10; `ends` marks
    (t, e) as "term" or "trunc" (final obs -frame(t, e))."""
    N = buffer.N
    for t in steps:
        obs = {"state": torch.tensor([[frame(t, e)] for e in range(N)])}
        action = torch.tensor([[float(t), float(e)] for e in range(N)])
        reward = torch.tensor([t + e / 10 for e in range(N)])
        term = torch.tensor([ends.get((t, e)) == "term" for e in range(N)])
        trunc = torch.tensor([ends.get((t, e)) == "trunc" for e in range(N)])
        final = {"state": torch.tensor([[-frame(t, e)] for e in range(N)])}
        buffer.add(obs, action, reward, term, trunc, final)


def seg(buffer: ReplayBuffer, t: int, e: int, n: int, chunk: bool = False):
    return buffer._segment(torch.tensor([t]), torch.tensor([e]), n, G, chunk=chunk)


def r(t: int, e: int) -> float:
    return t + e / 10


@pytest.fixture
def buffer() -> ReplayBuffer:
    b = ReplayBuffer(capacity=12, num_envs=2, obs_spec=SPEC, action_dim=2)  # T = 6 rows
    fill(b, range(6), {(2, 0): "term", (3, 1): "trunc"})
    return b


def test_nstep_stops_at_a_termination_without_bootstrap(buffer):
    s = seg(buffer, 1, 0, 3)  # steps 1, 2; 2 terminates
    assert int(s.steps) == 2
    assert float(s.reward) == pytest.approx(r(1, 0) + G * r(2, 0))
    assert float(s.discount) == 0.0


def test_nstep_stops_at_a_truncation_and_bootstraps_from_the_final_obs(buffer):
    s = seg(buffer, 2, 1, 3)  # steps 2, 3; 3 truncated
    assert int(s.steps) == 2
    assert float(s.reward) == pytest.approx(r(2, 1) + G * r(3, 1))
    assert float(s.discount) == pytest.approx(G**2)
    assert float(s.next_obs["state"][0, -1, 0]) == -frame(3, 1)


def test_nstep_full_segment_and_the_next_episode(buffer):
    s = seg(buffer, 3, 0, 2)  # env 0's second episode began at step 3
    assert int(s.steps) == 2 and float(s.discount) == pytest.approx(G**2)
    assert float(s.reward) == pytest.approx(r(3, 0) + G * r(4, 0))
    assert float(s.next_obs["state"][0, -1, 0]) == frame(5, 0)


def test_nstep_never_crosses_the_write_point(buffer):
    s = seg(buffer, 4, 1, 3)  # step 5 is the newest: its next obs is not written
    assert int(s.steps) == 1
    assert float(s.next_obs["state"][0, -1, 0]) == frame(5, 1)
    assert not bool(buffer._usable(torch.tensor([5]), torch.tensor([0])))


def test_nstep_after_the_ring_wraps(buffer):
    fill(buffer, range(6, 8), {})  # rows 0, 1 now hold steps 6, 7
    assert buffer.oldest == 2
    s = seg(buffer, 5, 0, 3)  # steps 5, 6; 7 is the newest
    assert int(s.steps) == 2
    assert float(s.reward) == pytest.approx(r(5, 0) + G * r(6, 0))
    assert float(s.next_obs["state"][0, -1, 0]) == frame(7, 0)
    assert not bool(buffer._usable(torch.tensor([1]), torch.tensor([0])))  # overwritten
    batch = buffer.sample(2000, n=3, gamma=G, generator=torch.Generator().manual_seed(0))
    t = (batch.obs["state"][:, -1, 0] // 10).long()
    assert int(t.min()) >= 2 and int(t.max()) <= 6  # 7 has no next obs yet
    # every sample's reward is its own segment's
    e = (batch.obs["state"][:, -1, 0] % 10).round().long()
    again = buffer._segment(t, e, 3, G, chunk=False)
    torch.testing.assert_close(again.reward, batch.reward)


def test_a_cut_episode_end_is_never_bootstrapped_across(buffer):
    buffer.cut_episodes(torch.tensor([0]))  # env 0's open episode ends at step 5 unseen
    fill(buffer, range(6, 8), {})
    assert not bool(buffer._usable(torch.tensor([5]), torch.tensor([0])))
    s = seg(buffer, 4, 0, 3)  # step 4, then 5 is cut: stop, bootstrap from obs[5]
    assert int(s.steps) == 1 and float(s.next_obs["state"][0, -1, 0]) == frame(5, 0)
    h = ReplayBuffer(12, 2, SPEC, 2, n_obs_steps=2)
    fill(h, range(6), {})
    h.cut_episodes(torch.tensor([0]))
    fill(h, range(6, 8), {})
    hist = h._history(torch.tensor([6]), torch.tensor([0]))["state"][0, :, 0]
    assert hist.tolist() == [frame(6, 0), frame(6, 0)]  # a new episode: first frame twice


def test_histories_clamp_to_the_episode_start_and_final_obs_shift():
    b = ReplayBuffer(capacity=20, num_envs=1, obs_spec=SPEC, action_dim=2, n_obs_steps=3)
    fill(b, range(6), {(2, 0): "trunc"})
    hist = lambda t: b._history(torch.tensor([t]), torch.tensor([0]))["state"][0, :, 0]  # noqa: E731
    assert hist(0).tolist() == [0.0, 0.0, 0.0]
    assert hist(2).tolist() == [0.0, 10.0, 20.0]
    assert hist(3).tolist() == [30.0, 30.0, 30.0]  # the next episode's start
    assert hist(5).tolist() == [30.0, 40.0, 50.0]
    s = seg(b, 1, 0, 3)  # steps 1, 2: truncated at 2
    assert s.next_obs["state"][0, :, 0].tolist() == [10.0, 20.0, -20.0]
    assert s.obs["state"][0, :, 0].tolist() == [0.0, 0.0, 10.0]


def test_chunks_cut_by_an_end_are_padded_or_dropped(buffer):
    c = seg(buffer, 1, 0, 3, chunk=True)  # steps 1, 2 then the termination
    assert c.mask[0].tolist() == [True, True, False]
    assert c.action[0, :, 0].tolist() == [1.0, 2.0, 2.0]  # padded with the last valid
    assert float(c.discount) == 0.0
    whole = buffer.sample_chunks(500, h=3, gamma=G, cut="drop",
                                 generator=torch.Generator().manual_seed(1))
    assert bool(whole.mask.all()) and bool((whole.steps == 3).all())
    padded = buffer.sample_chunks(500, h=3, gamma=G, cut="pad",
                                  generator=torch.Generator().manual_seed(1))
    assert bool((padded.steps < 3).any())
    assert (padded.mask.sum(1) == padded.steps).all()
    with pytest.raises(ValueError, match="pad' or 'drop"):
        buffer.sample_chunks(4, h=3, cut="absorb")


def test_images_are_stored_once_as_uint8_and_the_memory_figure_holds():
    spec = {"state": ((26,), torch.float32), "rgb_front": ((64, 64, 3), torch.uint8)}
    b = ReplayBuffer(capacity=64, num_envs=4, obs_spec=spec, action_dim=4, n_obs_steps=2)
    assert b.bytes_per_transition == 26 * 4 + 64 * 64 * 3 + 4 * 4 + 4 + 3 + 8
    obs = {"state": torch.zeros(4, 2, 26),
           "rgb_front": torch.randint(0, 255, (4, 2, 64, 64, 3), dtype=torch.uint8)}
    b.add(obs, torch.zeros(4, 4), torch.zeros(4), torch.zeros(4, dtype=torch.bool),
          torch.zeros(4, dtype=torch.bool))
    assert b.frames["rgb_front"].dtype == torch.uint8
    assert b.frames["rgb_front"].shape == (16, 4, 64, 64, 3)  # one frame per step, not To
    torch.testing.assert_close(b.frames["rgb_front"][0], obs["rgb_front"][:, -1])


def test_save_in_pieces_and_resume_from_the_committed_manifest(tmp_path):
    b = ReplayBuffer(capacity=4000, num_envs=2, obs_spec=SPEC, action_dim=2)  # 2 pieces
    fill(b, range(1500), {(700, 0): "term", (900, 1): "trunc"})
    committed = b.save(tmp_path)
    assert len(committed["pieces"]) == 2
    fill(b, range(1500, 1600), {(1550, 1): "term"})
    uncommitted = b.save(tmp_path)  # a kill before the checkpoint commits this manifest
    assert uncommitted["pieces"]["0"] == committed["pieces"]["0"]  # unchanged piece kept
    assert uncommitted["pieces"]["1"] != committed["pieces"]["1"]

    resumed = ReplayBuffer(capacity=4000, num_envs=2, obs_spec=SPEC, action_dim=2)
    resumed.load(tmp_path, committed)
    reference = ReplayBuffer(capacity=4000, num_envs=2, obs_spec=SPEC, action_dim=2)
    fill(reference, range(1500), {(700, 0): "term", (900, 1): "trunc"})
    assert resumed.count == reference.count == 1500
    for k in ("action", "reward", "terminated", "truncated", "cut", "episode_start"):
        torch.testing.assert_close(getattr(resumed, k), getattr(reference, k))
    torch.testing.assert_close(resumed.frames["state"], reference.frames["state"])
    assert resumed.final.keys() == reference.final.keys()
    g1, g2 = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    a, c = resumed.sample(64, 3, G, g1), reference.sample(64, 3, G, g2)
    torch.testing.assert_close(a.reward, c.reward)
    torch.testing.assert_close(a.next_obs["state"], c.next_obs["state"])
    # Continuing both the same way stays equal; prune drops what no manifest names.
    fill(resumed, range(1500, 1510), {})
    fill(reference, range(1500, 1510), {})
    torch.testing.assert_close(resumed.reward, reference.reward)
    ReplayBuffer.prune(tmp_path, committed)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [*committed["pieces"].values(), committed["final"]])
    wrong = ReplayBuffer(capacity=4000, num_envs=4, obs_spec=SPEC, action_dim=2)
    with pytest.raises(ConfigError, match="resume with the settings"):
        wrong.load(tmp_path, committed)


def test_demo_episodes_fill_a_one_env_buffer():
    demos = ReplayBuffer(capacity=100, num_envs=1, obs_spec=SPEC, action_dim=2)
    frames = {"state": torch.arange(5.0)[:, None]}
    demos.add_episode(frames, torch.zeros(5, 2), torch.tensor([0, 0, 0, 0, 1.0]),
                      terminated=True)
    demos.add_episode({"state": torch.arange(10.0, 14.0)[:, None]},
                      torch.zeros(4, 2), torch.zeros(4), terminated=False)
    s = seg(demos, 3, 0, 3)  # steps 3, 4: the first episode's termination
    assert int(s.steps) == 2 and float(s.discount) == 0.0
    assert float(s.reward) == pytest.approx(G * 1.0)
    assert not bool(demos._usable(torch.tensor([8]), torch.tensor([0])))  # open end: cut
    assert int(seg(demos, 6, 0, 5).steps) == 2  # stops before the cut step 8
    with pytest.raises(ConfigError, match="3 dims, the buffer's 2"):
        demos.add_episode(frames, torch.zeros(5, 3), torch.zeros(5), terminated=True)
    with pytest.raises(ConfigError, match="num_envs=1"):
        ReplayBuffer(100, 2, SPEC, 2).add_episode(frames, torch.zeros(5, 2), torch.zeros(5),
                                                   terminated=True)


def test_bad_settings_are_clear_errors():
    with pytest.raises(ConfigError, match="at least 8"):
        ReplayBuffer(capacity=5, num_envs=4, obs_spec=SPEC, action_dim=2)
    b = ReplayBuffer(capacity=8, num_envs=1, obs_spec=SPEC, action_dim=2)
    with pytest.raises(RuntimeError, match="fewer than two steps"):
        b.sample(4)
    with pytest.raises(ValueError, match="final_obs"):
        b.add({"state": torch.zeros(1, 1)}, torch.zeros(1, 2), torch.zeros(1),
              torch.ones(1, dtype=torch.bool), torch.zeros(1, dtype=torch.bool))


def test_fed_by_the_collector_it_rebuilds_the_histories_the_policy_saw():
    from test_collector import ConstantPolicy

    from embodied.envs import make_env
    from embodied.rollout import Collector

    env = make_env("reach", num_envs=3, max_episode_steps=5)
    policy = ConstantPolicy(env.obs_dim, env.action_dim, n_obs_steps=2, n_action_steps=2)
    collector = Collector(env, policy)
    collector.reset(seed=0)
    buffer = ReplayBuffer(capacity=3 * 40, num_envs=3,
                          obs_spec={"state": ((env.obs_dim,), torch.float32)},
                          action_dim=env.action_dim, n_obs_steps=2)
    steps = []
    for _ in range(8):  # 16 env steps: every env ends episodes (truncation at 5)
        for step in collector.decision(keep_steps=True).steps:
            buffer.add_step(step)
            steps.append(step)
    assert any(bool(s.truncated.any()) for s in steps)
    for t, step in enumerate(steps[:-1]):
        for e in range(3):
            got = buffer._segment(torch.tensor([t]), torch.tensor([e]), 1, G, chunk=False)
            torch.testing.assert_close(got.obs["state"][0], step.obs["state"][e])
            torch.testing.assert_close(got.next_obs["state"][0], step.next_obs["state"][e])
            torch.testing.assert_close(got.action[0], step.action[e])
    env.close()


def test_cut_takes_a_bool_mask_or_indices(buffer):
    buffer.cut_episodes(torch.tensor([False, True]))
    assert buffer.cut[5].tolist() == [False, True]
    other = ReplayBuffer(capacity=12, num_envs=2, obs_spec=SPEC, action_dim=2)
    fill(other, range(3), {})
    other.cut_episodes(torch.tensor([1]))
    assert other.cut[2].tolist() == [False, True]


def test_a_manifest_loads_from_any_directory_it_was_saved_to_and_never_changes(tmp_path):
    b = ReplayBuffer(capacity=4000, num_envs=2, obs_spec=SPEC, action_dim=2)
    fill(b, range(1500), {})
    b.save(tmp_path / "a")
    fill(b, range(1500, 1510), {})
    moved = b.save(tmp_path / "b")  # only one piece changed, but "b" gets every piece
    fresh = ReplayBuffer(capacity=4000, num_envs=2, obs_spec=SPEC, action_dim=2)
    fresh.load(tmp_path / "b", moved)
    torch.testing.assert_close(fresh.frames["state"], b.frames["state"])
    # Resuming an older manifest never rewrites a newer one's files.
    m1 = b.save(tmp_path / "b")
    fill(b, range(1510, 1520), {})
    m2 = b.save(tmp_path / "b")
    b.load(tmp_path / "b", m1)
    fill(b, range(1510, 1520), {(1515, 0): "term"})
    b.save(tmp_path / "b")
    again = ReplayBuffer(capacity=4000, num_envs=2, obs_spec=SPEC, action_dim=2)
    again.load(tmp_path / "b", m2)
    assert not bool(again.terminated.any())  # m2's state, not the later one


def test_loading_into_another_observation_spec_is_refused(tmp_path):
    b = ReplayBuffer(capacity=8, num_envs=1, obs_spec=SPEC, action_dim=2)
    fill(b, range(3), {})
    manifest = b.save(tmp_path)
    other = ReplayBuffer(capacity=8, num_envs=1, obs_spec={"state": ((3,), torch.uint8)},
                         action_dim=2)
    with pytest.raises(ConfigError, match="obs_spec"):
        other.load(tmp_path, manifest)


def test_a_buffer_larger_than_the_machine_is_refused_with_the_figure():
    spec = {"rgb": ((96, 96, 3), torch.uint8)}
    with pytest.raises(ConfigError, match="GiB.*lower buffer_size"):
        ReplayBuffer(capacity=10**8, num_envs=1, obs_spec=spec, action_dim=4)
