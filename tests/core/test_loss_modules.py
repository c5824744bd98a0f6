"""The ``nn.Module`` forms generated from the loss functions (``core.losses._module.loss_module``): each matches its
function on random inputs, keeps the constructor arguments of the former hand-written class (names, order,
defaults), rejects an unknown keyword with a ``TypeError`` naming it, and carries learnable options."""

from __future__ import annotations

import inspect
import pickle

import pytest
import torch

import core.losses as L
from core.losses._module import loss_module

torch.manual_seed(0)
B, D = 7, 5
Q, K = torch.randn(B, D, dtype=torch.float64), torch.randn(B, D, dtype=torch.float64)
VIEWS = torch.randn(B, 3, D, dtype=torch.float64)
Y = torch.tensor([0, 1, 0, 1, 2, 2, 0])
Z = torch.randn(B, dtype=torch.float64)
W = torch.rand(B, B, dtype=torch.float64)
NEGS = torch.randn(4, D, dtype=torch.float64)
TAU = torch.rand(B, dtype=torch.float64) + 0.2
MASK = torch.tensor([True, True, False, True, True, True, False])

#: (class, function, constructor options, forward args, forward kwargs); the options are not the defaults
CASES = [
    (L.InfoNCE, L.info_nce, {"temperature": 0.3, "symmetric": True, "margin": 0.1, "tile_size": 3}, (Q, K), {}),
    (L.InfoNCE, L.info_nce, {"top_k": 2, "decoupled": True}, (Q, K), {"negatives": NEGS, "temperature": TAU}),
    (L.NTXent, L.nt_xent, {"temperature": 0.4, "decoupled": True}, (Q, K), {"temperature": TAU.repeat(2)}),
    (L.NTXent, L.nt_xent, {"margin": 0.1, "tile_size": 4}, (Q, K), {}),
    (L.SupCon, L.sup_con, {"temperature": 0.2, "variant": "in", "class_prior": torch.tensor([0.5, 0.3, 0.2])},
     (VIEWS, Y), {"anchor_mask": MASK}),
    (L.CWCL, L.cwcl, {"temperature": 0.2, "symmetric": False}, (Q, K), {"weights": W}),
    (L.MultiViewInfoNCE, L.multi_view_info_nce, {"temperature": 0.3, "tile_size": (4, 5)}, (VIEWS,), {}),
    (L.ConR, L.con_r, {"temperature": 0.3, "window": 0.5, "push": "linear"}, (Q, Z, Z + 0.1 * Z.flip(0)),
     {"sample_weights": torch.rand(B, dtype=torch.float64) + 0.5}),
    (L.DebiasedInfoNCE, L.debiased_info_nce, {"tau_plus": 0.2, "beta": 0.5, "two_n": True}, (Q, K),
     {"temperature": 0.4}),
    (L.AUCContrastive, L.auc_contrastive, {"temperature": 0.3, "similarity": "dot"}, (Q, K), {}),
    (L.KernelUniformity, L.kernel_uniformity, {"gamma": 1.5}, (VIEWS,), {}),
    (L.AlignUniform, L.align_uniform, {"alpha": 1.5, "t": 3.0, "weight": 0.5}, (Q, K), {}),
    (L.PolyViewInfoNCE, L.poly_view_info_nce, {"temperature": 0.3, "aggregation": "geometric"}, (VIEWS,), {}),
    (L.CircleLoss, L.circle_loss, {"margin": 0.3, "gamma": 16.0}, (Q, K), {"labels": Y}),
    (L.MultiViewDHEL, L.multi_view_dhel, {"temperature": 0.3, "reduction": "sum"}, (VIEWS,), {}),
    (L.CACR, L.cacr, {"t_pos": 2.0, "t_neg": 3.0, "reduction": "sum"}, (Q, K), {"labels": Y}),
]

#: the constructors of the hand-written classes these replaced: (name, default) in order (no default: required)
CONSTRUCTORS = {
    "InfoNCE": [("temperature", 0.1), ("symmetric", False), ("decoupled", False), ("margin", 0.0),
                ("margin_type", "additive"), ("similarity", "cosine"), ("reduction", "mean"), ("tile_size", None),
                ("gather", None), ("top_k", None), ("backend", "torch")],
    "NTXent": [("temperature", 0.5), ("decoupled", False), ("margin", 0.0), ("margin_type", "additive"),
               ("similarity", "cosine"), ("reduction", "mean"), ("tile_size", None), ("gather", None),
               ("backend", "torch")],
    "SupCon": [("temperature", 0.07), ("base_temperature", 0.07), ("variant", "out"), ("similarity", "cosine"),
               ("reduction", "mean"), ("tile_size", None), ("gather", None), ("class_prior", None)],
    "CWCL": [("temperature",), ("symmetric", True), ("reduction", "mean"), ("tile_size", None), ("gather", None)],
    "MultiViewInfoNCE": [("temperature",), ("reduction", "mean"), ("tile_size", None), ("gather", None)],
    "ConR": [("temperature", 0.2), ("window", 1.0), ("push", "exp"), ("push_scale", 0.01), ("denominator", "paper"),
             ("reduction", "mean"), ("tile_size", None), ("gather", None)],
    "DebiasedInfoNCE": [("temperature", 0.5), ("tau_plus", 0.1), ("beta", 0.0), ("two_n", False),
                        ("similarity", "cosine"), ("reduction", "mean"), ("tile_size", None), ("gather", None)],
    "AUCContrastive": [("temperature", 0.1), ("similarity", "cosine"), ("reduction", "mean"), ("tile_size", None),
                       ("gather", None)],
    "KernelUniformity": [("gamma", 2.0), ("tile_size", None), ("gather", None)],
    "AlignUniform": [("alpha", 2.0), ("t", 2.0), ("weight", 1.0)],
    "PolyViewInfoNCE": [("temperature", 0.1), ("aggregation", "arithmetic"), ("reduction", "mean"),
                        ("tile_size", None), ("gather", None)],
    "CircleLoss": [("margin", 0.25), ("gamma", 256.0), ("reduction", "mean"), ("tile_size", None), ("gather", None)],
    "MultiViewDHEL": [("temperature", 0.2), ("reduction", "mean"), ("tile_size", None), ("gather", None)],
}


@pytest.mark.parametrize("cls, fn, options, args, kwargs", CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_module_equals_its_function(cls, fn, options, args, kwargs):
    module = cls(**options)
    want = fn(*args, **{**options, **kwargs})
    torch.testing.assert_close(module(*args, **kwargs), want, rtol=1e-12, atol=1e-12)
    # options given positionally, in the constructor's order, mean the same
    names = list(inspect.signature(cls).parameters)
    upto = max(names.index(n) for n in options) + 1
    defaults = {n: p.default for n, p in inspect.signature(cls).parameters.items()}
    positional = [options.get(n, defaults[n]) for n in names[:upto]]
    torch.testing.assert_close(cls(*positional)(*args, **kwargs), want, rtol=1e-12, atol=1e-12)
    for name, value in options.items():
        stored = getattr(module, name)
        assert stored is value or (isinstance(value, torch.Tensor) and torch.equal(stored, value))
    assert repr(module) == f"{cls.__name__}()"
    assert type(pickle.loads(pickle.dumps(module))) is cls


@pytest.mark.parametrize("name", sorted(CONSTRUCTORS))
def test_constructor_arguments_are_those_of_the_former_classes(name):
    params = list(inspect.signature(getattr(L, name)).parameters.values())
    got = [(p.name,) if p.default is inspect.Parameter.empty else (p.name, p.default) for p in params]
    assert got == CONSTRUCTORS[name]


@pytest.mark.parametrize("cls, fn, options, args, kwargs", CASES,
                         ids=[f"{c[0].__name__}-{i}" for i, c in enumerate(CASES)])
def test_a_wrong_keyword_raises_type_error_naming_it(cls, fn, options, args, kwargs):
    with pytest.raises(TypeError, match=rf"{cls.__name__}\(\).*'temprature'"):
        cls(temprature=0.3, **options)
    with pytest.raises(TypeError, match=rf"{cls.__name__}\.forward\(\).*'not_an_input'"):
        cls(**options)(*args, **kwargs, not_an_input=1)


def test_bad_options_raise_at_construction():
    with pytest.raises(ValueError, match="tau_plus"):
        L.DebiasedInfoNCE(tau_plus=1.5)
    with pytest.raises(ValueError, match="temperature"):
        L.InfoNCE(temperature=-1.0)
    with pytest.raises(ValueError, match="aggregation"):
        L.PolyViewInfoNCE(aggregation="harmonic")
    with pytest.raises(ValueError, match="gamma"):
        L.KernelUniformity(gamma=0.0)


def test_a_learnable_temperature_is_a_parameter_and_gets_its_gradient():
    log_t = torch.nn.Parameter(torch.tensor(0.25, dtype=torch.float64))
    module = L.NTXent(temperature=log_t)
    assert list(module.parameters()) == [log_t]
    module(Q, K).backward()
    t = log_t.detach().clone().requires_grad_(True)
    L.nt_xent(Q, K, temperature=t).backward()
    torch.testing.assert_close(log_t.grad, t.grad, rtol=1e-12, atol=0)


def test_tensor_options_declared_as_buffers_follow_the_module():
    prior = torch.tensor([0.5, 0.3, 0.2])
    module = L.SupCon(class_prior=prior).double()
    assert module.class_prior.dtype == torch.float64
    assert set(module.state_dict()) == {"class_prior"}


def test_the_factory_refuses_names_the_function_lacks():
    def loss(x, *, scale=1.0, weights=None):
        return x.sum() * scale

    with pytest.raises(ValueError, match="no keyword-only argument 'scal'"):
        loss_module(loss, "Loss", overrides=("scal",))
    with pytest.raises(ValueError, match="neither options nor per-call"):
        loss_module(loss, "Loss", options=("scale",))
    module = loss_module(loss, "Loss", forward=("weights",))(scale=2.0)
    assert float(module(torch.ones(3))) == 6.0
