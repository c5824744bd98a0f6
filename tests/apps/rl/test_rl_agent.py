"""DrQ-v2 / TACO / CPC pieces against naive re-computations of their formulas."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from apps.rl.agent import (
    AgentConfig,
    CPCHead,
    DrQV2Agent,
    TACOHead,
    exploration_std,
    noisy_action,
    random_shift,
)


def test_random_shift_equals_padded_crop_loop():
    x = torch.rand(5, 3, 10, 12)
    out = random_shift(x, pad=2, generator=torch.Generator().manual_seed(0))
    off = torch.randint(0, 5, (5, 2), generator=torch.Generator().manual_seed(0))
    for i in range(5):
        dy, dx = int(off[i, 0]), int(off[i, 1])
        padded = np.pad(x[i].numpy(), ((0, 0), (2, 2), (2, 2)), mode="edge")
        np.testing.assert_array_equal(out[i].numpy(), padded[:, dy:dy + 10, dx:dx + 12])


def test_exploration_schedule_and_noisy_action():
    cfg = AgentConfig(std_start=1.0, std_end=0.1, std_duration=100)
    assert exploration_std(0, cfg) == 1.0 and exploration_std(100, cfg) == pytest.approx(0.1)
    assert exploration_std(50, cfg) == pytest.approx(0.55) and exploration_std(10**6, cfg) == pytest.approx(0.1)
    mu = torch.zeros(10_000, 2, requires_grad=True)
    a = noisy_action(mu, std=1.0, clip=0.3)
    assert a.abs().max() <= 0.3 + 1e-6
    a.sum().backward()
    assert torch.equal(mu.grad, torch.ones_like(mu))  # additive noise: identity gradient through the mean
    big = noisy_action(torch.full((100, 1), 0.99), std=5.0, clip=None)
    assert big.abs().max() < 1.0


def _taco(action_dim=2, **kw):
    torch.manual_seed(0)
    cfg = AgentConfig(feature_dim=6, hidden_dim=16, multistep=3, **kw)
    return TACOHead(repr_dim=20, action_dim=action_dim, cfg=cfg), cfg


def test_taco_loss_equals_naive_bilinear_infonce():
    head, _ = _taco()
    B = 7
    h_t, h_v2, h_k = torch.randn(B, 20), torch.randn(B, 20), torch.randn(B, 20)
    acts, ret = torch.rand(B, 3, 2) * 2 - 1, torch.randn(B)
    total, parts = head.loss(h_t, h_v2, h_k, acts, ret)
    # naive: z_t, u_seq, q = H([z; u]), k = G(h_k), logits q W k^T, CE on the diagonal (row max removed)
    z = torch.tanh(F.layer_norm(h_t @ head.state_projection[0].weight.T + head.state_projection[0].bias, (6,),
                                head.state_projection[1].weight, head.state_projection[1].bias))
    u = torch.cat([head.action_encoder(acts[:, i]) for i in range(3)], dim=1)
    u_seq = head.sequence_projection(u)
    q = head.state_action_projection(torch.cat([z, u_seq], 1))
    k = head.state_projection(h_k)
    logits = q @ head.W @ k.T
    logits = logits - logits.max(1, keepdim=True).values
    taco = -torch.log_softmax(logits, 1).diagonal().mean()
    curl_logits = z @ head.W @ head.state_projection(h_v2).T
    curl = -torch.log_softmax(curl_logits, 1).diagonal().mean()
    rew = ((head.reward_head(torch.cat([z, u_seq], 1)).squeeze(1) - ret) ** 2).mean()
    taco, curl, rew = taco.detach(), curl.detach(), rew.detach()
    assert parts["taco"] == pytest.approx(float(taco), rel=1e-5)
    assert parts["curl"] == pytest.approx(float(curl), rel=1e-5)
    assert parts["reward"] == pytest.approx(float(rew), rel=1e-5)
    assert float(total.detach()) == pytest.approx(float(taco + curl + rew), rel=1e-5)


def test_taco_keys_are_stop_gradient_and_terms_switch_off():
    head, _ = _taco(curl=False, reward_prediction=False)
    h_t, h_k = torch.randn(5, 20, requires_grad=True), torch.randn(5, 20, requires_grad=True)
    total, parts = head.loss(h_t, h_t, h_k, torch.zeros(5, 3, 2), torch.zeros(5))
    assert set(parts) == {"taco"}
    total.backward()
    assert h_k.grad is None and h_t.grad is not None and h_t.grad.abs().sum() > 0
    assert head.latent_action_dim == int(1.25 * 2) + 1


def test_cpc_head_equals_naive_formula():
    torch.manual_seed(0)
    cfg = AgentConfig(feature_dim=4, multistep=2, cpc_context_dim=5)
    head = CPCHead(repr_dim=8, cfg=cfg)
    B, T = 3, 5
    h = torch.randn(B, T, 8)
    loss, _ = head.loss(h)
    z = head.state_projection(h)
    c, _ = head.gru(z)
    flat = z.reshape(B * T, 4)
    expected = 0.0
    for k in (1, 2):
        terms = []
        for b in range(B):
            for t in range(T - k):
                logits = flat @ head.predictors[k - 1](c[b, t])
                terms.append(-(logits[b * T + t + k] - torch.logsumexp(logits, 0)))
        expected += torch.stack(terms).mean()
    assert float(loss.detach()) == pytest.approx(float(expected.detach()), rel=1e-5)


def _batch(B=6, obs_shape=(9, 84, 84), adim=1, K=3, seq=0):
    g = torch.Generator().manual_seed(0)
    b = {"obs": torch.randint(0, 256, (B, *obs_shape), generator=g, dtype=torch.uint8),
         "next_obs": torch.randint(0, 256, (B, *obs_shape), generator=g, dtype=torch.uint8),
         "obs_k": torch.randint(0, 256, (B, *obs_shape), generator=g, dtype=torch.uint8),
         "action": torch.rand(B, adim, generator=g) * 2 - 1, "action_seq": torch.rand(B, K, adim, generator=g),
         "reward": torch.rand(B, generator=g), "discount": torch.full((B,), 0.99 ** 3)}
    if seq:
        b["obs_seq"] = torch.randint(0, 256, (B, seq, *obs_shape), generator=g, dtype=torch.uint8)
    return b


def test_critic_loss_uses_nstep_target_with_clipped_double_q():
    torch.manual_seed(0)
    agent = DrQV2Agent((4,), 1, AgentConfig(hidden_dim=16, std_duration=1, std_end=1e-8))
    h, h_next = torch.randn(6, 256), torch.randn(6, 256)
    a, r, d = torch.rand(6, 1), torch.randn(6), torch.full((6,), 0.5)
    torch.manual_seed(1)
    loss = agent.critic_loss(h, a, r, d, h_next, step=10)
    with torch.no_grad():
        torch.manual_seed(1)
        na = (agent.actor(h_next) + torch.randn(6, 1) * 1e-8).clamp(-1, 1)
        t1, t2 = agent.critic_target(h_next, na)
        target = r[:, None] + d[:, None] * torch.min(t1, t2)
        q1, q2 = agent.critic(h, a)
        expected = F.mse_loss(q1, target) + F.mse_loss(q2, target)
    assert float(loss.detach()) == pytest.approx(float(expected), rel=1e-4)


@pytest.mark.parametrize("aux", ["none", "taco", "cpc"])
def test_update_changes_every_trained_part_and_polyak_target(aux):
    torch.manual_seed(0)
    cfg = AgentConfig(hidden_dim=32, aux=aux, critic_tau=0.5)
    agent = DrQV2Agent((9, 84, 84), 1, cfg)
    opts = agent.make_optimizers()
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    metrics = agent.update(_batch(seq=5 if aux == "cpc" else 0), step=5000, opts=opts)
    after = agent.state_dict()
    changed = {k.split(".")[0] for k in after if not torch.equal(before[k], after[k])}
    assert {"encoder", "actor", "critic", "critic_target"} <= changed
    if aux != "none":
        assert aux in changed and {"taco": "taco", "cpc": "cpc"}[aux] in metrics
    # target = (1 - tau) target_old + tau critic_new
    k = "critic.q1.0.weight"
    np.testing.assert_allclose(after["critic_target.q1.0.weight"],
                               0.5 * before["critic_target.q1.0.weight"] + 0.5 * after[k], atol=1e-6)


def test_latent_action_critic_switch():
    base = AgentConfig(hidden_dim=16, aux="taco")
    on = DrQV2Agent((4,), 2, base)
    off = DrQV2Agent((4,), 2, dataclasses.replace(base, latent_action_critic=False))
    assert on.critic.q1[0].in_features == base.feature_dim + on.taco.latent_action_dim
    assert off.critic.q1[0].in_features == base.feature_dim + 2
    with pytest.raises(ValueError, match="aux"):
        DrQV2Agent((4,), 2, dataclasses.replace(base, aux="byol"))


def test_act_uniform_then_policy():
    agent = DrQV2Agent((4,), 3, AgentConfig(hidden_dim=16, num_expl_steps=10))
    obs = torch.randn(2000, 4)
    a = agent.act(obs, step=0, eval_mode=False)
    assert a.min() < -0.9 and a.max() > 0.9  # uniform exploration
    mu = agent.act(obs, step=0, eval_mode=True)
    assert torch.equal(mu, agent.actor(agent.encoder(obs)))
