"""Independent dense references for every loss of :mod:`core.losses`, written as plain per-anchor loops
straight from the papers' formulas (never calling the engine), plus comparison helpers.

Every reference returns the per-anchor (or per-sample) losses as a 1-D tensor that keeps the autograd
graph, so the tests compare values *and* input gradients against the engine in float64.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

RTOL = 1e-10
ATOL = 1e-12


# ----------------------------------------------------------------------------------------------- helpers


def unit(x: Tensor) -> Tensor:
    return x / torch.sqrt((x * x).sum())


def sim(u: Tensor, v: Tensor, similarity: str = "cosine") -> Tensor:
    if similarity == "cosine":
        return (u * v).sum() / torch.sqrt((u * u).sum() * (v * v).sum())
    return (u * v).sum()


def lse(terms: Sequence[Tensor]) -> Tensor:
    return torch.logsumexp(torch.stack(list(terms)), 0)


def margin_cos(s: Tensor, margin: float, margin_type: str) -> Tensor:
    """Positive-only margin: additive s - m, or angular cos(theta + m) with the ArcFace fallback."""
    if margin == 0.0:
        return s
    if margin_type == "additive":
        return s - margin
    theta = torch.acos(s)
    if float(theta.detach()) + margin < math.pi:
        return torch.cos(theta + margin)
    return s - margin * math.sin(math.pi - margin)


def views_major(features: Tensor) -> list[Tensor]:
    """(B, V, D) -> [view 0 of every sample, then view 1, ...]."""
    B, V, _ = features.shape
    return [features[b, v] for v in range(V) for b in range(B)]


def compare(
    ours: Callable[..., Tensor], ref: Callable[..., Tensor], inputs: dict[str, Tensor],
    rtol: float = RTOL, atol: float = ATOL, grad: Sequence[str] | None = None,
) -> None:
    """ours(**inputs) == ref(**inputs) in value and in the gradient of every floating input (or ``grad``)."""
    names = [k for k, v in inputs.items() if isinstance(v, Tensor) and v.is_floating_point()]
    if grad is not None:
        names = list(grad)

    def fresh():
        out = {}
        for k, v in inputs.items():
            if k in names:
                out[k] = v.detach().clone().requires_grad_(True)
            else:
                out[k] = v
        return out

    a, b = fresh(), fresh()
    la, lb = ours(**a), ref(**b)
    torch.testing.assert_close(la, lb, rtol=rtol, atol=atol)
    # a random cotangent checks every output entry's gradient when the loss is not a scalar
    gen = torch.Generator().manual_seed(123)
    w = torch.rand(la.shape, generator=gen, dtype=la.dtype)
    ga = _grads((la * w).sum(), [a[k] for k in names])
    gb = _grads((lb * w).sum(), [b[k] for k in names])
    for k, x, y in zip(names, ga, gb):
        x = torch.zeros_like(a[k]) if x is None else x
        y = torch.zeros_like(b[k]) if y is None else y
        torch.testing.assert_close(x, y, rtol=rtol, atol=atol, msg=lambda m, k=k: f"gradient of {k}: {m}")


def _grads(out: Tensor, inputs: list[Tensor]) -> list[Tensor | None]:
    if not out.requires_grad:  # e.g. a reference whose every anchor contributes a constant 0
        return [None] * len(inputs)
    return list(torch.autograd.grad(out, inputs, allow_unused=True))


def reduce_ref(per: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return per.mean()
    if reduction == "sum":
        return per.sum()
    return per


# ------------------------------------------------------------------------------------ InfoNCE family


def _info_nce_direction(anchors, cands, extra, temperature, decoupled, margin, margin_type, similarity):
    out = []
    for i in range(anchors.shape[0]):
        pos = margin_cos(sim(anchors[i], cands[i], similarity), margin, margin_type) / temperature
        terms = [sim(anchors[i], cands[j], similarity) / temperature for j in range(cands.shape[0]) if j != i]
        if extra is not None:
            terms += [sim(anchors[i], n, similarity) / temperature for n in extra]
        if not decoupled:
            terms.append(pos)
        out.append(lse(terms) - pos)
    return torch.stack(out)


def ref_info_nce(query, key, temperature=0.1, symmetric=False, decoupled=False, margin=0.0,
                 margin_type="additive", similarity="cosine", negatives=None, reduction="mean"):
    per = _info_nce_direction(query, key, negatives, temperature, decoupled, margin, margin_type, similarity)
    if symmetric:
        back = _info_nce_direction(key, query, None, temperature, decoupled, margin, margin_type, similarity)
        per = 0.5 * (per + back)
    return reduce_ref(per, reduction)


def ref_nt_xent(z1, z2, temperature=0.5, decoupled=False, margin=0.0, margin_type="additive",
                similarity="cosine", reduction="mean"):
    z = [*z1, *z2]
    n = z1.shape[0]
    out = []
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        pos = margin_cos(sim(z[a], z[p], similarity), margin, margin_type) / temperature
        terms = [sim(z[a], z[k], similarity) / temperature for k in range(2 * n) if k not in (a, p)]
        if not decoupled:
            terms.append(pos)
        out.append(lse(terms) - pos)
    return reduce_ref(torch.stack(out), reduction)


def ref_sup_con(features, labels=None, temperature=0.07, base_temperature=0.07, variant="out", reduction="mean",
                similarity="cosine", anchor_mask=None):
    B, V, _ = features.shape
    z = views_major(features)
    y = [int(labels[b]) if labels is not None else b for _ in range(V) for b in range(B)]
    out = []
    for a in range(B * V):
        if anchor_mask is not None and not bool(anchor_mask[a % B]):
            continue
        logits = {k: sim(z[a], z[k], similarity) / temperature for k in range(B * V) if k != a}
        log_den = lse(list(logits.values()))
        pos = [k for k in logits if y[k] == y[a]]
        log_probs = torch.stack([logits[p] - log_den for p in pos])
        if variant == "out":
            loss = -log_probs.mean()
        else:
            loss = -torch.log(torch.exp(log_probs).mean())
        out.append(loss * (temperature / base_temperature))
    return reduce_ref(torch.stack(out), reduction)


def ref_sig_lip(a, b, logit_scale, logit_bias, reduction="mean"):
    B = a.shape[0]
    out = []
    for i in range(B):
        row = 0.0
        for j in range(B):
            x = logit_scale * sim(a[i], b[j]) + logit_bias
            zij = 1.0 if i == j else -1.0
            row = row - torch.nn.functional.logsigmoid(zij * x)
        out.append(row)
    return reduce_ref(torch.stack(out), reduction)


def _cwcl_direction(p, q, w, temperature):
    out = []
    for i in range(p.shape[0]):
        logits = [sim(p[i], q[j]) / temperature for j in range(q.shape[0])]
        log_den = lse(logits)
        total = sum(float(w[i, j]) for j in range(q.shape[0]))
        acc = 0.0
        for j in range(q.shape[0]):
            acc = acc + w[i, j] * (logits[j] - log_den)
        out.append(-acc / total)
    return torch.stack(out)


def ref_cwcl(a, b, weights, temperature, symmetric=True, reduction="mean"):
    per = _cwcl_direction(a, b, weights, temperature)
    if symmetric:
        per = 0.5 * (per + _cwcl_direction(b, a, weights.T, temperature))
    return reduce_ref(per, reduction)


def ref_multi_view(views, temperature, reduction="mean"):
    B, V, _ = views.shape
    out = []
    for i in range(B):
        num = 0.0
        den = 0.0
        for l in range(V):
            for m in range(V):
                if m != l:
                    num = num + torch.exp(sim(views[i, l], views[i, m]) / temperature)
            for j in range(B):
                for m in range(V):
                    if (j, m) != (i, l):
                        den = den + torch.exp(sim(views[i, l], views[j, m]) / temperature)
        out.append(-torch.log(num / den))
    return reduce_ref(torch.stack(out), reduction)


def ref_mean_shifted(z1, z2, center, temperature=0.25, angular_weight=0.0, reduction="mean"):
    n = z1.shape[0]
    phi = [unit(x) for x in [*z1, *z2]]
    theta = [unit(f - center) for f in phi]
    out = []
    for a in range(2 * n):
        p = (a + n) % (2 * n)
        den = sum(torch.exp((theta[a] * theta[k]).sum() / temperature) for k in range(2 * n) if k != a)
        loss = -torch.log(torch.exp((theta[a] * theta[p]).sum() / temperature) / den)
        if angular_weight > 0:
            loss = loss + 2 * angular_weight * ((phi[a] - center) ** 2).sum()
        out.append(loss)
    return reduce_ref(torch.stack(out), reduction)


def _dist(u: Tensor, v: Tensor) -> float:
    u, v = u.reshape(-1).tolist(), v.reshape(-1).tolist()
    return math.sqrt(sum((x - y) ** 2 for x, y in zip(u, v)))


def ref_con_r(features, labels, preds, temperature=0.2, window=1.0, push="exp", push_scale=0.01,
              sample_weights=None, denominator="paper", reduction="mean"):
    """ConR on (N, D) features (flatten (B, V, D) inputs before calling)."""
    N = features.shape[0]
    out = []
    for j in range(N):
        wj = 1.0 if sample_weights is None else float(sample_weights[j])
        kpos = [i for i in range(N) if i != j and _dist(labels[i], labels[j]) <= window]
        kneg = [q for q in range(N) if _dist(labels[q], labels[j]) > window and _dist(preds[q], preds[j]) <= window]
        if not kpos or not kneg:
            out.append(features.new_zeros(()))
            continue
        s = {k: sim(features[j], features[k]) / temperature for k in range(N)}
        den = sum(torch.exp(s[p]) for p in kpos)
        for q in kneg:
            d = _dist(labels[j], labels[q])
            S = wj * math.exp(push_scale * d) if push == "exp" else wj * push_scale * d
            den = den + S * torch.exp(s[q])
        if denominator == "official":
            den = den + (N - len(kpos))
        loss = -sum(torch.log(torch.exp(s[i]) / den) for i in kpos) / len(kpos)
        out.append(wj * loss)
    return reduce_ref(torch.stack(out), reduction)


def _supremix_weight(delta: float, kind: str) -> float:
    delta = abs(delta)
    return {"l1_inv": delta + 1, "l2_inv": delta ** 2 + 1, "l1": 1 / (delta + 1), "l2": 1 / (delta ** 2 + 1),
            "none": 1.0}[kind]


def ref_sup_re_mix(features, labels, mix_alpha, temperature=0.5, window=5.0, distance_weight="l1_inv",
                   mix_neg=True, mix_pos=True, detach_mixtures=False, reduction="mean"):
    """SupReMix with the mixtures built explicitly (features (B, V, D) or (N, D))."""
    if features.dim() == 3:
        V = features.shape[1]
        z = [unit(x) for x in views_major(features)]
        y = [float(labels[b]) for _ in range(V) for b in range(features.shape[0])]
    else:
        z = [unit(x) for x in features]
        y = [float(v) for v in labels]
    N = len(z)
    out = []
    for a in range(N):
        cands: list[tuple[Tensor, float]] = []  # (logit, weight)
        pos: list[Tensor] = []
        for k in range(N):
            if k == a:
                continue
            logit = (z[a] * z[k]).sum() / temperature
            cands.append((logit, _supremix_weight(y[a] - y[k], distance_weight)))
            if y[k] == y[a]:
                pos.append(logit)
        if mix_neg:
            for k in range(N):
                if y[k] == y[a]:
                    continue
                al = float(mix_alpha[a, k])
                m = al * z[a] + (1 - al) * z[k]
                m = m.detach() if detach_mixtures else m
                label = al * y[a] + (1 - al) * y[k]
                cands.append(((z[a] * m).sum() / temperature, _supremix_weight(y[a] - label, distance_weight)))
        if mix_pos:
            for j in range(N):
                if not (y[j] < y[a] and y[a] - y[j] < window):
                    continue
                for k in range(N):
                    if not (y[k] > y[a] and y[k] - y[a] < window):
                        continue
                    al = (y[k] - y[a]) / (y[k] - y[j])
                    m = al * z[j] + (1 - al) * z[k]
                    m = m.detach() if detach_mixtures else m
                    logit = (z[a] * m).sum() / temperature
                    cands.append((logit, _supremix_weight(y[a] - (al * y[j] + (1 - al) * y[k]), distance_weight)))
                    pos.append(logit)
        if not pos:
            out.append(z[a].new_zeros(()))
            continue
        log_den = torch.log(sum(w * torch.exp(lg) for lg, w in cands))
        out.append(-sum(p - log_den for p in pos) / len(pos))
    return reduce_ref(torch.stack(out), reduction)


def ref_cpc(context, future, predictors, temperature=1.0, reduction="mean"):
    B, T, _ = context.shape
    zs = [future[b, t] for b in range(B) for t in range(T)]
    per_step = []
    for k, W in enumerate(predictors, start=1):
        losses = []
        for b in range(B):
            for t in range(T - k):
                pred = W(context[b, t])
                logits = [(z * pred).sum() / temperature for z in zs]
                losses.append(lse(logits) - logits[b * T + t + k])
        per_step.append(torch.stack(losses))
    if reduction == "mean":
        return sum(s.mean() for s in per_step)
    if reduction == "sum":
        return sum(s.sum() for s in per_step)
    raise ValueError(reduction)
