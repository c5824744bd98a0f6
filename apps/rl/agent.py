"""DrQ-v2 with the TACO and CPC auxiliary objectives, readable top to bottom (CleanRL style).

DrQ-v2 (Yarats et al. 2021): a conv encoder on 84x84 frame stacks with random-shift augmentation, a
DDPG-style deterministic actor with scheduled Gaussian exploration noise, a clipped double-Q critic trained
on n-step returns, target critic by Polyak averaging.

TACO (Zheng et al. 2023, arXiv 2306.13229) adds a representation loss that maximises
I(Z_{t+K}; [Z_t, U_t..U_{t+K-1}]) with InfoNCE (bilinear critic q W k^T, positives on the diagonal):

    z_t = G(f(aug(o_t)))         u_seq = P([g(a_t); ...; g(a_{t+K-1})])      q = H([z_t; u_seq])
    k   = sg(G(f(aug(o_{t+K}))))  L_TACO = -1/B sum_i log softmax_j(q_i W k_j^T)_i

plus CURL (same-frame, two augmentations, same W) and reward prediction (MLP([z_t; u_seq]) -> n-step return),
and feeds the latent action g(a_t) to the critic. Every term is switchable.

CPC (van den Oord et al. 2018) is the alternative: a GRU over latent states z_t..z_{t+T-1} gives contexts c_t
that predict z_{t+k}, k = 1..K, with one W_k per step (:func:`core.losses.cpc`).

Both contrastive terms run on the project's engine: :func:`core.losses.info_nce` (dot similarity, temperature
1, the bilinear W applied to the query) and :func:`core.losses.cpc`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from core.losses import cpc, info_nce

__all__ = [
    "AgentConfig", "random_shift", "Encoder", "VectorEncoder", "Actor", "Critic", "TACOHead", "CPCHead", "DrQV2Agent",
    "exploration_std",
]


# ----------------------------------------------------------------------------------------------------------
# Hyperparameters (DrQ-v2 / TACO defaults; the batch size is an explicit choice, see ``batch_size``)
# ----------------------------------------------------------------------------------------------------------
@dataclass
class AgentConfig:
    feature_dim: int = 50            # trunk / latent state size (DrQ-v2 and TACO: 50)
    hidden_dim: int = 1024           # actor / critic / TACO MLP width
    lr: float = 1e-4                 # Adam lr of encoder, actor, critic
    aux_lr: float = 1e-4             # Adam lr of the auxiliary (TACO / CPC) module + shared encoder
    critic_tau: float = 0.01         # Polyak rate of the target critic
    gamma: float = 0.99
    nstep: int = 3                   # n of the n-step return
    batch_size: int = 256            # DrQ-v2's 256 (TACO's code silently uses 1024): chosen explicitly here
    std_start: float = 1.0           # exploration std: linear from std_start to std_end over std_duration steps
    std_end: float = 0.1
    std_duration: int = 100_000      # agent steps (DrQ-v2 "easy" tasks: 100k)
    std_clip: float = 0.3
    num_expl_steps: int = 2000       # uniform random actions for the first agent steps
    update_every_steps: int = 2
    aux: str = "none"                # "none" (DrQ-v2), "taco" or "cpc"
    multistep: int = 3               # TACO's K (also CPC's number of prediction steps)
    curl: bool = True                # TACO: add the CURL term
    reward_prediction: bool = True   # TACO: add the reward-prediction term
    latent_action_critic: bool = True  # TACO: the critic sees g(a_t) instead of a_t
    action_latent_dim: int | None = None  # d_u; None = floor(1.25 |A|) + 1
    cpc_context_dim: int = 50        # CPC: GRU hidden size


def exploration_std(step: int, cfg: AgentConfig) -> float:
    """DrQ-v2's ``linear(start, end, duration)`` schedule of the exploration noise std."""
    mix = min(max(step / max(cfg.std_duration, 1), 0.0), 1.0)
    return (1.0 - mix) * cfg.std_start + mix * cfg.std_end


# ----------------------------------------------------------------------------------------------------------
# Augmentation: random shift (pad 4 with replicate, crop back at an integer offset per sample)
# ----------------------------------------------------------------------------------------------------------
def random_shift(x: Tensor, pad: int = 4, generator: torch.Generator | None = None) -> Tensor:
    """Shift each image of ``x`` (B, C, H, W) by an integer offset in [-pad, pad]^2 (edges replicated).

    DrQ-v2 does this with ``grid_sample`` on a grid of integer shifts; an integer crop of the padded
    image is the same operation without interpolation.
    """
    B, C, H, W = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    off = torch.randint(0, 2 * pad + 1, (B, 2), device=x.device, generator=generator)
    rows = off[:, 0, None] + torch.arange(H, device=x.device)  # (B, H)
    cols = off[:, 1, None] + torch.arange(W, device=x.device)  # (B, W)
    b = torch.arange(B, device=x.device)[:, None, None, None]
    c = torch.arange(C, device=x.device)[None, :, None, None]
    return padded[b, c, rows[:, None, :, None], cols[:, None, None, :]]


# ----------------------------------------------------------------------------------------------------------
# Networks
# ----------------------------------------------------------------------------------------------------------
class Encoder(nn.Module):
    """DrQ-v2 conv encoder: conv3x3/2 then 3x conv3x3/1, 32 channels, ReLU; input uint8-valued pixels."""

    def __init__(self, in_channels: int, image_size: int = 84, channels: int = 32) -> None:
        super().__init__()
        self.convnet = nn.Sequential(
            nn.Conv2d(in_channels, channels, 3, stride=2), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
            nn.Conv2d(channels, channels, 3, stride=1), nn.ReLU(),
        )
        side = (image_size - 3) // 2 + 1 - 6
        self.repr_dim = channels * side * side

    def forward(self, obs: Tensor) -> Tensor:
        return self.convnet(obs / 255.0 - 0.5).flatten(1)


class VectorEncoder(nn.Module):
    """State tasks: a 2-layer MLP (256 units) in place of the conv encoder (no augmentation)."""

    def __init__(self, obs_dim: int, width: int = 256) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(obs_dim, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU())
        self.repr_dim = width

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs)


def trunk(repr_dim: int, feature_dim: int) -> nn.Sequential:
    """Linear -> LayerNorm -> tanh: the DrQ-v2 trunk (and TACO's state projection G)."""
    return nn.Sequential(nn.Linear(repr_dim, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())


def mlp(inp: int, hidden: int, out: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(inp if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*mods, nn.Linear(hidden, out))


class Actor(nn.Module):
    """Deterministic policy mu(h) = tanh(MLP(trunk(h))); exploration adds clipped Gaussian noise."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.policy = mlp(feature_dim, hidden_dim, action_dim)

    def forward(self, h: Tensor) -> Tensor:
        return torch.tanh(self.policy(self.trunk(h)))


def noisy_action(mu: Tensor, std: float, clip: float | None) -> Tensor:
    """mu + eps, eps ~ N(0, std^2) (clipped to [-clip, clip]); clamped to [-1, 1] with a straight-through grad.

    The gradient w.r.t. ``mu`` is the identity (the noise is additive): DrQ-v2's truncated normal sample.
    """
    eps = torch.randn_like(mu) * std
    if clip is not None:
        eps = eps.clamp(-clip, clip)
    x = mu + eps
    clamped = x.clamp(-1.0 + 1e-6, 1.0 - 1e-6)
    return x - x.detach() + clamped.detach()


class Critic(nn.Module):
    """Clipped double Q: Q_i(trunk(h), a) for i = 1, 2 (a may be a latent action)."""

    def __init__(self, repr_dim: int, action_dim: int, feature_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.trunk = trunk(repr_dim, feature_dim)
        self.q1 = mlp(feature_dim + action_dim, hidden_dim, 1)
        self.q2 = mlp(feature_dim + action_dim, hidden_dim, 1)

    def forward(self, h: Tensor, a: Tensor) -> tuple[Tensor, Tensor]:
        x = torch.cat([self.trunk(h), a], dim=-1)
        return self.q1(x), self.q2(x)


class TACOHead(nn.Module):
    """TACO's modules: action encoder g, sequence projection P, state projection G, state-action projection H,
    bilinear W, reward predictor. ``loss`` returns (total, parts)."""

    def __init__(self, repr_dim: int, action_dim: int, cfg: AgentConfig) -> None:
        super().__init__()
        self.K, self.curl, self.reward_prediction = cfg.multistep, cfg.curl, cfg.reward_prediction
        d_u = cfg.action_latent_dim or math.floor(1.25 * action_dim) + 1
        self.latent_action_dim = d_u
        self.action_encoder = nn.Sequential(nn.Linear(action_dim, 64), nn.Tanh(), nn.Linear(64, d_u))
        self.sequence_projection = nn.Sequential(
            nn.Linear(self.K * d_u, self.K * d_u), nn.LayerNorm(self.K * d_u), nn.Tanh())
        self.state_projection = trunk(repr_dim, cfg.feature_dim)
        self.state_action_projection = nn.Sequential(
            nn.Linear(cfg.feature_dim + self.K * d_u, cfg.hidden_dim), nn.ReLU(),
            nn.Linear(cfg.hidden_dim, cfg.feature_dim))
        self.W = nn.Parameter(torch.rand(cfg.feature_dim, cfg.feature_dim))  # U(0, 1), as TACO / CURL
        self.reward_head = nn.Sequential(
            nn.Linear(cfg.feature_dim + self.K * d_u, cfg.hidden_dim), nn.ReLU(), nn.Linear(cfg.hidden_dim, 1))

    def encode_actions(self, actions: Tensor) -> Tensor:
        """(B, K, A) -> u_seq (B, K d_u)."""
        u = self.action_encoder(actions)
        return self.sequence_projection(u.flatten(1))

    def bilinear_info_nce(self, query: Tensor, key: Tensor) -> Tensor:
        """-1/B sum_i log softmax_j(q_i W k_j^T)_i, on the core engine (dot product of qW and k, tau = 1)."""
        return info_nce(query @ self.W, key, similarity="dot", temperature=1.0)

    def loss(self, h_t: Tensor, h_t_view2: Tensor, h_tK: Tensor, actions: Tensor, nstep_return: Tensor
             ) -> tuple[Tensor, dict[str, float]]:
        """h_t: encoder output of an augmentation of o_t (with grad); h_t_view2 of a second augmentation and
        h_tK of o_{t+K} (keys: their projections are stop-gradient); actions (B, K, A)."""
        z_t = self.state_projection(h_t)
        u_seq = self.encode_actions(actions)
        za = torch.cat([z_t, u_seq], dim=-1)
        with torch.no_grad():
            k = self.state_projection(h_tK)
        taco = self.bilinear_info_nce(self.state_action_projection(za), k)
        total, parts = taco, {"taco": taco.item()}
        if self.curl:
            with torch.no_grad():
                k2 = self.state_projection(h_t_view2)
            curl = self.bilinear_info_nce(z_t, k2)
            total = total + curl
            parts["curl"] = curl.item()
        if self.reward_prediction:
            rew = F.mse_loss(self.reward_head(za).squeeze(-1), nstep_return)
            total = total + rew
            parts["reward"] = rew.item()
        return total, parts


class CPCHead(nn.Module):
    """CPC over latent states: z = G(h), c = GRU(z), predict z_{t+k} from c_t with W_k, k = 1..K."""

    def __init__(self, repr_dim: int, cfg: AgentConfig) -> None:
        super().__init__()
        self.K = cfg.multistep
        self.state_projection = trunk(repr_dim, cfg.feature_dim)
        self.gru = nn.GRU(cfg.feature_dim, cfg.cpc_context_dim, batch_first=True)
        self.predictors = nn.ModuleList(
            nn.Linear(cfg.cpc_context_dim, cfg.feature_dim, bias=False) for _ in range(self.K))

    def loss(self, h_seq: Tensor) -> tuple[Tensor, dict[str, float]]:
        """h_seq: (B, T, repr_dim) encoder outputs of o_t..o_{t+T-1}, T > K."""
        z = self.state_projection(h_seq)
        c, _ = self.gru(z)
        loss = cpc(c, z, predictors=self.predictors)
        return loss, {"cpc": loss.item()}


# ----------------------------------------------------------------------------------------------------------
# The agent: act, update_critic, update_actor, update_aux
# ----------------------------------------------------------------------------------------------------------
class DrQV2Agent(nn.Module):
    """DrQ-v2 (+ TACO / CPC). Holds the networks; the optimisers are built by :meth:`make_optimizers`."""

    def __init__(self, obs_shape: tuple[int, int, int], action_dim: int, cfg: AgentConfig) -> None:
        super().__init__()
        if cfg.aux not in ("none", "taco", "cpc"):
            raise ValueError(f"aux must be 'none', 'taco' or 'cpc', got {cfg.aux!r}")
        self.cfg, self.action_dim = cfg, action_dim
        self.pixels = len(obs_shape) == 3
        self.encoder = Encoder(obs_shape[0], obs_shape[1]) if self.pixels else VectorEncoder(obs_shape[0])
        rd = self.encoder.repr_dim
        self.taco = TACOHead(rd, action_dim, cfg) if cfg.aux == "taco" else None
        self.cpc = CPCHead(rd, cfg) if cfg.aux == "cpc" else None
        self.latent_actions = self.taco is not None and cfg.latent_action_critic
        critic_action_dim = self.taco.latent_action_dim if self.latent_actions else action_dim
        self.actor = Actor(rd, action_dim, cfg.feature_dim, cfg.hidden_dim)
        self.critic = Critic(rd, critic_action_dim, cfg.feature_dim, cfg.hidden_dim)
        self.critic_target = Critic(rd, critic_action_dim, cfg.feature_dim, cfg.hidden_dim)
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)

    def make_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        cfg = self.cfg
        critic_params = list(self.critic.parameters())
        if self.latent_actions:  # the critic loss also trains TACO's action encoder g
            critic_params += list(self.taco.action_encoder.parameters())
        opts = {
            "encoder": torch.optim.Adam(self.encoder.parameters(), lr=cfg.lr),
            "actor": torch.optim.Adam(self.actor.parameters(), lr=cfg.lr),
            "critic": torch.optim.Adam(critic_params, lr=cfg.lr),
        }
        aux = self.taco or self.cpc
        if aux is not None:  # TACO's separate Adam over its module, which includes the shared encoder
            opts["aux"] = torch.optim.Adam(list(aux.parameters()) + list(self.encoder.parameters()), lr=cfg.aux_lr)
        return opts

    def aug(self, x: Tensor) -> Tensor:
        """Random shift for pixels, identity for state vectors."""
        return random_shift(x) if self.pixels else x

    def critic_action(self, a: Tensor) -> Tensor:
        return self.taco.action_encoder(a) if self.latent_actions else a

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @torch.no_grad()
    def act(self, obs: Tensor, step: int, eval_mode: bool) -> Tensor:
        """obs (B, C, H, W) uint8-valued, any device -> actions in [-1, 1]^A, on the CPU."""
        mu = self.actor(self.encoder(obs.to(self.device).float()))
        if eval_mode:
            return mu.cpu()
        if step < self.cfg.num_expl_steps:
            return (torch.rand_like(mu) * 2 - 1).cpu()
        return noisy_action(mu, exploration_std(step, self.cfg), None).cpu()

    @torch.no_grad()
    def latent_state(self, obs: Tensor) -> Tensor:
        """The agent's latent state: the critic trunk on the (unaugmented) encoding, (B, feature_dim), on the CPU."""
        return self.critic.trunk(self.encoder(obs.to(self.device).float())).cpu()

    def critic_loss(self, h: Tensor, action: Tensor, reward: Tensor, discount: Tensor, h_next: Tensor,
                    step: int) -> Tensor:
        """Clipped double-Q TD loss on the n-step target r + gamma^n min_i Q'_i(h', pi(h') + eps)."""
        with torch.no_grad():
            next_a = noisy_action(self.actor(h_next), exploration_std(step, self.cfg), self.cfg.std_clip)
            tq1, tq2 = self.critic_target(h_next, self.critic_action(next_a))
            target = reward[:, None] + discount[:, None] * torch.min(tq1, tq2)
        q1, q2 = self.critic(h, self.critic_action(action))
        return F.mse_loss(q1, target) + F.mse_loss(q2, target)

    def actor_loss(self, h: Tensor, step: int) -> Tensor:
        """-min_i Q_i(h, pi(h) + eps) on detached features (the actor does not train the encoder)."""
        a = noisy_action(self.actor(h.detach()), exploration_std(step, self.cfg), self.cfg.std_clip)
        q1, q2 = self.critic(h.detach(), self.critic_action(a))
        return -torch.min(q1, q2).mean()

    def update(self, batch: dict[str, Tensor], step: int, opts: dict[str, torch.optim.Optimizer],
               backward=None) -> dict[str, float]:
        """One DrQ-v2 update (critic + encoder, actor, target critic) plus the auxiliary loss.

        ``backward(loss)`` defaults to ``loss.backward()``; the Fabric loop passes ``fabric.backward``.
        """
        backward = backward or (lambda loss: loss.backward())
        metrics: dict[str, float] = {}
        dev = self.device
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}
        obs, next_obs = batch["obs"].float(), batch["next_obs"].float()
        aug_obs = self.aug(obs)
        h = self.encoder(aug_obs)
        with torch.no_grad():
            h_next = self.encoder(self.aug(next_obs))

        # critic (+ encoder, + TACO's action encoder when latent actions feed the critic)
        loss_c = self.critic_loss(h, batch["action"], batch["reward"], batch["discount"], h_next, step)
        opts["encoder"].zero_grad(set_to_none=True)
        opts["critic"].zero_grad(set_to_none=True)
        backward(loss_c)
        opts["encoder"].step()
        opts["critic"].step()
        metrics["critic_loss"] = loss_c.item()

        # actor
        loss_a = self.actor_loss(h, step)
        opts["actor"].zero_grad(set_to_none=True)
        backward(loss_a)
        opts["actor"].step()
        metrics["actor_loss"] = loss_a.item()

        # auxiliary representation loss (its own optimiser, over the aux module and the shared encoder)
        if self.taco is not None:
            o_t = obs
            h1 = self.encoder(self.aug(o_t))
            with torch.no_grad():  # both keys (CURL's second view, o_{t+K}) are stop-gradient
                h2 = self.encoder(self.aug(o_t)) if self.cfg.curl else h1
                hK = self.encoder(self.aug(batch["obs_k"].float()))
            loss_x, parts = self.taco.loss(h1, h2, hK, batch["action_seq"], batch["reward"])
        elif self.cpc is not None:
            seq = batch["obs_seq"].float()  # (B, T, C, H, W)
            B, T = seq.shape[:2]
            h_seq = self.encoder(self.aug(seq.flatten(0, 1))).view(B, T, -1)
            loss_x, parts = self.cpc.loss(h_seq)
        else:
            loss_x, parts = None, {}
        if loss_x is not None:
            opts["aux"].zero_grad(set_to_none=True)
            backward(loss_x)
            opts["aux"].step()
            metrics.update(parts)

        # target critic
        with torch.no_grad():
            tau = self.cfg.critic_tau
            for p, tp in zip(self.critic.parameters(), self.critic_target.parameters(), strict=True):
                tp.lerp_(p, tau)
        return metrics
