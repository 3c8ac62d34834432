"Property tests of AlignMix: the batched log-domain Sinkhorn, the plans, the mix, the forward and `AlignMixCallback`."
import math, sys, warnings
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.alignmix import sinkhorn_log, alignment_cost, sinkhorn_plan, alignmix, alignmix_forward, AlignMixCallback
from openmixup_nb.manifoldmix import manifoldmix_forward
from openmixup_nb.models import create_model, stage_outputs
from openmixup_nb.callback import synth_dls, MixedLoss
from fastai.learner import Learner
from fastai.callback.core import Callback, CancelFitException
from fastai.losses import CrossEntropyLossFlat
import fastai.callback.progress  # noqa: F401  Learner.no_bar

from _helpers import gen, _seed, _one_thread  # noqa: F401  (fixtures)

FAST = settings(max_examples=25, deadline=None)
FLOATS = [torch.float32, torch.float64]

def n_hooks(model): return sum(len(m._forward_hooks) for m in model.modules())

def row_log_error(P):
    "Per sample Σ_i |log R_i|, R the row sums of P (an assignment matrix, rows summing to 1 when converged)"
    return P.sum(2).log().abs().sum(1)

@st.composite
def maps(draw, max_n=6, max_c=8, max_side=5, dtypes=FLOATS):
    "A batch of feature maps (N, C, h, w), N from 1, odd and non-square grids down to 1×1, float32 or float64"
    n, c = draw(st.integers(1, max_n)), draw(st.integers(1, max_c))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    return torch.randn(n, c, h, w, generator=gen(seed)).to(dtype), seed

# ------------------------------------------------------------------------------------------------ the solver
@FAST
@given(b=maps(), eps=st.sampled_from([0.05, 0.1, 0.5]), tol=st.sampled_from([1e-1, 1e-2, 1e-3]))
def test_plan_doubly_stochastic(b, eps, tol):
    A, seed = b
    B = torch.randn(A.shape, generator=gen(seed + 1)).to(A.dtype)
    P, it = sinkhorn_plan(A, B, eps=eps, tol=tol)
    n, r = A.shape[0], A.shape[2] * A.shape[3]
    assert P.shape == (n, r, r) and P.dtype == A.dtype and not P.requires_grad
    assert 1 <= it <= 100 and torch.isfinite(P).all() and (P >= 0).all()
    atol = 1e-10 if A.dtype == torch.float64 else 2e-5
    torch.testing.assert_close(P.sum(1), torch.ones(n, r, dtype=P.dtype), atol=atol, rtol=0)  # columns: exact
    if it < 100: assert row_log_error(P).max() <= tol / eps * (1 + 1e-4) + atol  # rows: within the tolerance

def stop_error(K, eps, t):
    "The stopping test of iteration t: the worst sample's Σ_i |Δu_i| = ε Σ_i |log R_i| of the plan after t-1 iterations"
    P = torch.exp(-K / eps) if t == 1 else sinkhorn_log(K, eps, max_iter=t - 1, tol=0.)[0]
    return float((P.sum(2) * K.shape[1]).log().abs().sum(1).max() * eps)

@FAST
@given(n=st.integers(1, 5), L=st.integers(1, 6), M=st.integers(1, 6), eps=st.sampled_from([0.05, 0.2, 1.]),
       tol=st.sampled_from([1e-1, 1e-3]), seed=st.integers(0, 2**31 - 1))
def test_stops_by_the_tolerance(n, L, M, eps, tol, seed):
    "The solver stops at the first iteration whose test passes, never later, never before, never past max_iter"
    K = torch.rand(n, L, M, generator=gen(seed), dtype=torch.float64)
    P, it = sinkhorn_log(K, eps, max_iter=100, tol=tol)
    assert 1 <= it <= 100
    if it < 100: assert stop_error(K, eps, it) < tol * (1 + 1e-9)
    if it > 1: assert stop_error(K, eps, it - 1) >= tol * (1 - 1e-9)
    torch.testing.assert_close(P, sinkhorn_log(K, eps, max_iter=it, tol=0.)[0], atol=1e-14, rtol=0)  # the same iterations

@pytest.mark.parametrize('max_iter', [1, 2, 5, 37])
def test_never_exceeds_max_iter(max_iter):
    K = torch.rand(4, 7, 7, generator=gen(0)) * 50  # hard: costs far above ε
    assert sinkhorn_log(K, 0.1, max_iter=max_iter, tol=0.)[1] == max_iter
    assert sinkhorn_log(K, 0.1, max_iter=max_iter, tol=1e-3)[1] <= max_iter
    for check_every in (1, 3, 10):
        assert sinkhorn_log(K, 0.1, max_iter=max_iter, tol=1e-3, check_every=check_every)[1] <= max_iter

def test_check_every():
    "Testing the tolerance less often only runs on to the next test: the same plan at that iteration"
    K = torch.rand(3, 6, 6, generator=gen(1), dtype=torch.float64)
    _, it1 = sinkhorn_log(K, 0.1, tol=1e-6, check_every=1)
    P5, it5 = sinkhorn_log(K, 0.1, tol=1e-6, check_every=5)
    assert it5 == 5 * math.ceil(it1 / 5) and it5 >= it1
    torch.testing.assert_close(P5, sinkhorn_log(K, 0.1, max_iter=it5, tol=0.)[0], atol=1e-14, rtol=0)

def plain_sinkhorn(K, eps, n_iter=4000):
    "Sinkhorn-Knopp in the exp domain, float64, no stabilisation: fine for costs of the order of ε"
    E = torch.exp(-K / eps)
    N, L, M = K.shape
    y = torch.ones(N, M, dtype=torch.float64)
    for _ in range(n_iter):
        x = (1 / L) / torch.einsum('nij,nj->ni', E, y)
        y = (1 / M) / torch.einsum('nij,ni->nj', E, x)
    return x[:, :, None] * E * y[:, None, :]

@FAST
@given(n=st.integers(1, 4), L=st.integers(1, 6), M=st.integers(1, 6), eps=st.floats(0.2, 1.), seed=st.integers(0, 2**31 - 1))
def test_log_domain_matches_plain_sinkhorn(n, L, M, eps, seed):
    K = torch.rand(n, L, M, generator=gen(seed), dtype=torch.float64)
    torch.testing.assert_close(sinkhorn_log(K, eps, max_iter=4000, tol=1e-14)[0], plain_sinkhorn(K, eps), atol=1e-12, rtol=0)

def test_small_eps_stays_finite():
    "Costs thousands of times ε (the official raw costs): exp(-K/ε) underflows, the log-domain plan does not"
    K = torch.rand(8, 16, 16, generator=gen(2)) * 1000
    assert torch.exp(-K / 0.1).sum(2).min() == 0
    P, _ = sinkhorn_log(K, 0.1, max_iter=300, tol=0.)
    assert torch.isfinite(P).all()
    torch.testing.assert_close(P.sum(1), torch.full((8, 16), 1 / 16), atol=1e-6, rtol=0)
    K[:, :, 3] += 5e4  # a column far from every row
    P, _ = sinkhorn_log(K, 0.1, max_iter=300, tol=0.)
    assert torch.isfinite(P).all() and (P.sum(1)[:, 3] - 1 / 16).abs().max() < 1e-6

@pytest.mark.parametrize('dt', [torch.bfloat16, torch.float16])
def test_autocast_does_not_lower_the_plan_precision(dt):
    "Under autocast the batched products of the cost and of the iterations would run in half precision: they do not"
    A = torch.randn(8, 64, 4, 4, generator=gen(13)).to(dt)
    with torch.autocast('cpu', dtype=dt):
        K = alignment_cost(A, A.roll(1, 0)); P, it = sinkhorn_plan(A, A.roll(1, 0))
    assert K.dtype == torch.float32 and P.dtype == torch.float32
    assert torch.equal(K, alignment_cost(A, A.roll(1, 0))) and torch.equal(P, sinkhorn_plan(A, A.roll(1, 0))[0])

def test_a_non_finite_sample_does_not_hold_the_others_up():
    A = torch.randn(6, 8, 3, 3, generator=gen(3))
    B = torch.randn(6, 8, 3, 3, generator=gen(4))
    A[2, 0, 1, 1] = float('nan')
    P, it = sinkhorn_plan(A, B, tol=1e-3)
    assert it < 100 and torch.isfinite(P[[0, 1, 3, 4, 5]]).all()
    assert row_log_error(P[[0, 1, 3, 4, 5]]).max() <= 1e-2 * (1 + 1e-4)

def test_cost():
    A, B = torch.randn(3, 16, 4, 5, generator=gen(5)), torch.randn(3, 16, 4, 5, generator=gen(6))
    K = alignment_cost(A, B)
    ref = ((A.flatten(2)[:, :, :, None] - B.flatten(2)[:, :, None, :])**2).sum(1)
    torch.testing.assert_close(K, ref, atol=1e-4, rtol=1e-5)
    assert (alignment_cost(A, A).diagonal(dim1=1, dim2=2) < 1e-4).all() and (K >= 0).all()

def test_cost_norm_scale_free():
    "With the mean normalisation the plan does not depend on the scale of the features; raw costs do"
    A, B = torch.randn(4, 32, 4, 4, generator=gen(7)), torch.randn(4, 32, 4, 4, generator=gen(8))
    P1, _ = sinkhorn_plan(A.double(), B.double(), tol=1e-10, max_iter=1000)
    P2, _ = sinkhorn_plan(10 * A.double(), 10 * B.double(), tol=1e-10, max_iter=1000)
    torch.testing.assert_close(P1, P2, atol=1e-8, rtol=0)
    R1, _ = sinkhorn_plan(A.double(), B.double(), cost_norm=None, eps=10., tol=1e-10, max_iter=1000)
    R2, _ = sinkhorn_plan(10 * A.double(), 10 * B.double(), cost_norm=None, eps=10., tol=1e-10, max_iter=1000)
    assert (R1 - R2).abs().max() > 0.01

def test_self_plan_is_the_identity():
    "A map's plan with itself: the identity, up to the entropic blur of positions that are close against ε"
    A = torch.randn(3, 64, 3, 3, generator=gen(9)) * 3
    torch.testing.assert_close(sinkhorn_plan(A, A, tol=1e-8, max_iter=1000)[0], torch.eye(9).expand(3, 9, 9), atol=2e-3, rtol=0)

def test_real_features_doubly_stochastic():
    "Last-stage features of a CIFAR ResNet-18 on real CIFAR-10 images: plans doubly stochastic within the tolerance"
    try:
        from openmixup_nb.data import cifar_tensors, CIFAR_STATS
        ds = cifar_tensors('cifar10', 'test', n=64, seed=0)
    except Exception as e: pytest.skip(f'CIFAR-10 not available: {e}')
    mean, std = torch.tensor(CIFAR_STATS[0]).view(1, 3, 1, 1), torch.tensor(CIFAR_STATS[1]).view(1, 3, 1, 1)
    x = (ds.x.float() / 255 - mean) / std
    torch.manual_seed(0)
    with torch.no_grad(): A = stage_outputs(create_model('resnet18', width=0.25), x)[-1]
    B = A[torch.randperm(64, generator=gen(0))]
    for eps, tol in [(0.1, 1e-2), (0.05, 1e-3)]:
        P, it = sinkhorn_plan(A, B, eps=eps, tol=tol)
        assert it < 100
        torch.testing.assert_close(P.sum(1), torch.ones(64, 16), atol=2e-5, rtol=0)
        assert row_log_error(P).max() <= tol / eps * (1 + 1e-4)
    P, it = sinkhorn_plan(A, B, cost_norm=None)  # the official raw costs: the cap is reached, rows far from 1
    assert it == 100 and (P.sum(2) - 1).abs().max() > 0.5

# ------------------------------------------------------------------------------------------------ the mix
@FAST
@given(b=maps(dtypes=FLOATS + [torch.float16, torch.bfloat16]), align=st.sampled_from(['batch', 'sample', 'b_to_a', 'a_to_b']),
       lam_mode=st.sampled_from(['batch', 'sample']), pairing=st.sampled_from(['perm', 'flip', 'derangement']))
def test_mix_formula(b, align, lam_mode, pairing):
    A, seed = b
    y = torch.randint(0, 5, (len(A),), generator=gen(seed))
    A0 = A.clone()
    res = alignmix(A, y, lam_mode=lam_mode, pairing=pairing, align=align, generator=gen(seed))
    assert torch.equal(A, A0)  # not in place
    assert res.x.shape == A.shape and res.x.dtype == A.dtype and torch.isfinite(res.x.float()).all()
    assert res.lam.shape == (len(A),) and res.lam.dtype == torch.float32
    assert torch.equal(res.y_a, y) and torch.equal(res.y_b, y[res.index])
    P, d = res.extra['plan'].double(), res.extra['b_to_a'].view(-1, 1, 1)
    assert res.extra['b_to_a'].shape == (len(A),) and res.extra['b_to_a'].dtype == torch.bool
    if align == 'batch': assert res.extra['b_to_a'].all() or not res.extra['b_to_a'].any()
    a, bb = A.double().flatten(2), A.double()[res.index].flatten(2)
    lam = res.lam.double().view(-1, 1, 1)
    ref = torch.where(d, lam * a + (1 - lam) * bb @ P.transpose(1, 2), lam * a @ P + (1 - lam) * bb).view_as(A)
    tol = {torch.float64: 1e-9, torch.float32: 1e-4}.get(A.dtype, 0.05)
    torch.testing.assert_close(res.x.double(), ref, atol=tol * (1 + ref.abs().max().item()), rtol=0)
    own = res.index == torch.arange(len(A))
    assert torch.equal(res.x[own], A[own])  # a sample paired with itself keeps its map exactly
    assert torch.equal(P[own], torch.eye(P.shape[1], dtype=P.dtype).expand(int(own.sum()), -1, -1))

@FAST
@given(b=maps(dtypes=FLOATS + [torch.float16, torch.bfloat16]), align=st.sampled_from(['batch', 'sample', 'b_to_a', 'a_to_b']))
def test_identity_partner(b, align):
    A, _ = b
    res = alignmix(A, torch.arange(len(A)), index=torch.arange(len(A)), align=align)
    assert torch.equal(res.x, A)
    assert torch.equal(res.extra['plan'], torch.eye(A.shape[2] * A.shape[3]).to(res.extra['plan'].dtype).expand(len(A), -1, -1))

@FAST
@given(b=maps(dtypes=FLOATS), align=st.sampled_from(['b_to_a', 'a_to_b', 'sample']), i=st.integers(0, 5))
def test_gradients_reach_both_maps_not_the_plan(b, align, i):
    A, seed = b
    if len(A) < 2: A = torch.cat([A, A.flip(0) + 1])
    i = i % len(A)
    idx = torch.arange(len(A)).roll(1)  # no fixed points
    Ag = A.clone().requires_grad_()
    res = alignmix(Ag, None, lam=0.3, index=idx, align=align, generator=gen(seed))
    assert not res.extra['plan'].requires_grad and res.x.requires_grad
    g = torch.randn(res.x[i].shape, generator=gen(seed + 1), dtype=A.dtype)
    (res.x[i] * g).sum().backward()
    # the gradient of the formula with the plan a constant
    P, d, lam = res.extra['plan'][i].to(A.dtype), bool(res.extra['b_to_a'][i]), res.lam[i].to(A.dtype) # λ: float32's 0.3
    a, bb = A[i].flatten(1).clone().requires_grad_(), A[idx[i]].flatten(1).clone().requires_grad_()
    out = lam * a + (1 - lam) * bb @ P.T if d else lam * a @ P + (1 - lam) * bb
    ga, gb = torch.autograd.grad((out * g.flatten(1)).sum(), (a, bb))
    grad = Ag.grad.flatten(2)
    tol = 1e-9 if A.dtype == torch.float64 else 1e-5
    torch.testing.assert_close(grad[i], ga, atol=tol, rtol=tol)
    torch.testing.assert_close(grad[idx[i]], gb, atol=tol, rtol=tol)
    others = torch.ones(len(A), dtype=torch.bool); others[[i, int(idx[i])]] = False
    assert (grad[others] == 0).all()

def test_seeded_and_directions():
    A = torch.randn(32, 8, 2, 2, generator=gen(10))
    r1, r2 = (alignmix(A, None, align='sample', lam_mode='sample', generator=gen(3)) for _ in range(2))
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.extra['b_to_a'], r2.extra['b_to_a'])
    assert 0 < int(r1.extra['b_to_a'].sum()) < 32  # both directions in one batch
    batch = [bool(alignmix(A, None, generator=gen(s)).extra['b_to_a'][0]) for s in range(40)]
    assert 5 < sum(batch) < 35  # a fair coin per batch

def test_meta_device():
    "Shapes only: the solver runs without host round trips on the meta device"
    A = torch.randn(4, 8, 3, 3).to('meta')
    res = alignmix(A, torch.arange(4).to('meta'))
    assert res.x.shape == A.shape and res.x.device.type == 'meta' and res.extra['sinkhorn_iters'] == 100

def test_pooled_mix_is_manifoldmix():
    "A doubly stochastic P is undone by the average over positions: pooled, AlignMix is ManifoldMix of the maps"
    A = torch.randn(6, 16, 4, 4, generator=gen(11), dtype=torch.float64)
    idx = torch.arange(6).roll(2)
    for align in ('b_to_a', 'a_to_b'):
        res = alignmix(A, None, lam=0.3, index=idx, align=align, tol=1e-12, max_iter=2000)
        lam = res.lam.double()[:, None] # float32's 0.3
        torch.testing.assert_close(res.x.mean((2, 3)), lam * A.mean((2, 3)) + (1 - lam) * A[idx].mean((2, 3)), atol=1e-10, rtol=0)

BAD = [('align', 'both'), ('align', None), ('eps', 0.), ('eps', -1.), ('eps', float('inf')), ('eps', True), ('max_iter', 0),
       ('max_iter', 2.5), ('tol', -1e-3), ('tol', float('nan')), ('cost_norm', 'max'), ('cost_norm', 1), ('alpha', 0.),
       ('lam', 1.5), ('index', torch.arange(5)), ('lam_mode', 'pixel'), ('pairing', 'shuffle'), ('generator', 0)]

@pytest.mark.parametrize('arg,value', BAD, ids=[f'{a}={v!r}'[:30] for a, v in BAD])
def test_bad_options_name_the_option(arg, value):
    A = torch.randn(4, 8, 3, 3)
    with pytest.raises((ValueError, TypeError), match=arg): alignmix(A, torch.arange(4), **{arg: value})

def test_bad_inputs():
    A = torch.randn(4, 8, 3, 3)
    for bad in (A.flatten(2), A.flatten(1), A[0]):
        with pytest.raises(ValueError, match=r'\(N, C, H, W\)'): alignmix(bad, None)
    with pytest.raises(ValueError, match='label'): alignmix(A, torch.arange(3))
    with pytest.raises(ValueError, match='floating'): alignmix(A.to(torch.uint8), None)
    with pytest.raises(ValueError, match='empty'): alignmix(A[:0], None)
    with pytest.raises(TypeError, match='torch.Tensor'): alignmix(A.tolist(), None)
    with pytest.raises(ValueError, match='same shape'): sinkhorn_plan(A, A[:, :4])
    with pytest.raises(ValueError, match='K must'): sinkhorn_log(torch.rand(3, 3))
    with pytest.raises(ValueError, match='K must'): sinkhorn_log(torch.zeros(2, 0, 3))
    with pytest.raises(ValueError, match='check_every'): sinkhorn_log(torch.rand(1, 3, 3), check_every=0)

# ------------------------------------------------------------------------------------------------ forward
@pytest.mark.parametrize('arch,pooled_linear', [('resnet18', True), ('preact_resnet18', False), ('wrn28_8', False)])
def test_forward_on_cifar_nets(arch, pooled_linear):
    torch.manual_seed(0)
    m = create_model(arch, width=0.125).eval()
    x, y = torch.randn(6, 3, 32, 32, generator=gen(12)), torch.arange(6)
    idx = torch.arange(6).roll(1)
    pred, res = alignmix_forward(m, x, y, lam=0.4, index=idx, align='a_to_b', tol=1e-7, max_iter=3000)
    ref, rref = manifoldmix_forward(m, x, y, lam=0.4, index=idx, layer=len(m.stages))
    assert res.x.shape == rref.x.shape and res.extra['layer'] == len(m.stages) and n_hooks(m) == 0
    assert torch.allclose(pred, ref, atol=1e-4) == pooled_linear  # post-activation ResNet: pooled linearly, as ManifoldMix
    assert torch.equal(alignmix_forward(m, x, y, index=torch.arange(6))[0], m(x))

def test_forward_timm_and_refusals():
    m = create_model('timm:resnet18', num_classes=10)
    pred, res = alignmix_forward(m, torch.randn(3, 3, 64, 64), torch.arange(3))
    assert pred.shape == (3, 10) and res.x.shape == (3, 512, 2, 2) and n_hooks(m) == 0
    _, res = alignmix_forward(m, torch.randn(3, 3, 32, 32), torch.arange(3))  # a 1×1 map: nothing to align
    assert res.x.shape == (3, 512, 1, 1) and torch.equal(res.extra['plan'], torch.ones(3, 1, 1))
    with pytest.raises(ValueError, match='token sequences'):
        alignmix_forward(create_model('timm:vit_tiny_patch16_224', img_size=32, patch_size=8), torch.randn(2, 3, 32, 32), torch.arange(2))
    m = create_model('resnet18', width=0.125); m.output_fmt = 'NHWC'
    with pytest.raises(ValueError, match='NHWC'): alignmix_forward(m, torch.randn(2, 3, 32, 32), torch.arange(2))
    with pytest.raises(ValueError, match='align'): alignmix_forward(create_model('resnet18', width=0.125), torch.randn(2, 3, 32, 32), None, align='x')

# ------------------------------------------------------------------------------------------------ callback
class Methods(Callback):
    "Per training batch: the method and layer it was mixed with, and whether the mixed loss was the one trained on"
    order = 60
    def before_fit(self): self.seen = []
    def after_loss(self):
        if not self.training: return
        cb = self.learn.align_mix
        self.seen.append((cb.res.extra['method'], cb.res.extra['layer'], isinstance(self.learn.loss_func, MixedLoss),
                          abs(self.learn.loss.item() - cb.res.loss(self.learn.pred.detach(), cb.old_lf).item())))

def fit(cb, arch='resnet18', size=16, epochs=1, extra=(), **kw):
    torch.manual_seed(0)
    learn = Learner(synth_dls(n=64, shape=(3, size, size)), create_model(arch, num_classes=3, **kw),
                    loss_func=CrossEntropyLossFlat(), cbs=[cb, Methods(), *extra])
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        learn.fit(epochs, 1e-2)
    return learn

@pytest.mark.parametrize('make,arch,size', [(lambda: AlignMixCallback(), 'resnet18', 16),
                                            (lambda: AlignMixCallback(align='sample', lam_mode='sample'), 'preact_resnet18', 16),
                                            (lambda: AlignMixCallback.openmixup(generator=gen(0)), 'wrn28_8', 16),
                                            (lambda: AlignMixCallback.official(), 'timm:resnet18', 64)])
def test_callback_trains(make, arch, size):
    kw = {} if arch.startswith('timm') else {'width': 0.125}
    learn = fit(make(), arch, size, **kw)
    assert not isinstance(learn.loss_func, MixedLoss) and n_hooks(learn.model) == 0
    assert all(math.isfinite(float(l)) for l in learn.recorder.losses)
    seen = learn.methods.seen
    assert len(seen) == len(learn.dls.train) and all(m and d < 1e-5 for _, _, m, d in seen)
    last = len(learn.model.stages) if hasattr(learn.model, 'stages') else 4
    assert all(l == last for m, l, _, _ in seen if m == 'alignmix')

def test_callback_switch_frequency():
    "manifold_p is the share of ManifoldMix batches, drawn per batch from the callback's generator"
    cb = AlignMixCallback.openmixup(generator=gen(0))
    Learner(synth_dls(), create_model('resnet18', width=0.125, num_classes=3), loss_func=CrossEntropyLossFlat(), cbs=cb)
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    methods = [cb.mix(x.clone(), y).extra['method'] for _ in range(400)]
    assert 160 < methods.count('manifoldmix') < 240
    assert {m for m in methods} == {'manifoldmix', 'alignmix'}
    cb = AlignMixCallback(generator=gen(0))
    Learner(synth_dls(), create_model('resnet18', width=0.125, num_classes=3), loss_func=CrossEntropyLossFlat(), cbs=cb)
    assert all(cb.mix(x, y).extra['method'] == 'alignmix' for _ in range(20))

def test_callback_once_per_batch_never_in_validation():
    class Twice(Callback):
        order = 70
        def before_validate(self): self.valid = []
        def after_pred(self):
            if self.training: self.learn.model(self.x)  # a second forward of the same batch: not mixed again
            else: self.valid.append((self.x.clone(), self.pred.detach().clone()))
    cb = AlignMixCallback()
    calls = []
    fire = cb._fire_align
    cb._fire_align = lambda mod, inp, h: calls.append(cb._armed is not None and cb._armed[0] == 'align') or fire(mod, inp, h)
    learn = fit(cb, width=0.125, extra=(Twice(),))
    assert sum(calls) == len(learn.dls.train)
    learn.model.eval()
    with torch.no_grad():
        for xv, pv in learn.twice.valid: assert torch.equal(learn.model(xv), pv)

def test_cancelled_fit_removes_hooks():
    class CancelAfter(Callback):
        def after_batch(self):
            if self.iter == 1: raise CancelFitException
    learn = fit(AlignMixCallback(), width=0.125, extra=(CancelAfter(),))
    assert n_hooks(learn.model) == 0 and not isinstance(learn.loss_func, MixedLoss)

def test_callback_refuses_token_models_and_bad_options():
    with pytest.raises(ValueError, match='manifold_p'): AlignMixCallback(manifold_p=1.5)
    with pytest.raises(ValueError, match='manifold_alpha'): AlignMixCallback(manifold_alpha=0.)
    with pytest.raises(ValueError, match='align'): AlignMixCallback(align='both')
    with pytest.raises(ValueError, match='eps'): AlignMixCallback(eps=-1)
    vit = create_model('timm:vit_tiny_patch16_224', img_size=16, patch_size=4, num_classes=3)
    learn = Learner(synth_dls(shape=(3, 16, 16)), vit, loss_func=CrossEntropyLossFlat(), cbs=AlignMixCallback())
    with pytest.raises(ValueError, match='token sequences'):
        with learn.no_bar(), learn.no_logging(): learn.fit(1)
    assert n_hooks(vit) == 0

def test_mix_outside_a_fit():
    "`cb.mix(x, y)` before any fit: the batch as it is until the last stage runs (no hook yet)"
    cb = AlignMixCallback()
    Learner(synth_dls(), create_model('resnet18', width=0.125, num_classes=3), loss_func=CrossEntropyLossFlat(), cbs=cb)
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    res = cb.mix(x, y)
    assert res.x is x and torch.equal(res.lam, torch.ones(4)) and res.extra == {'layer': 4, 'method': 'alignmix'}
    with pytest.raises(ValueError, match='floating'): cb.mix(x.to(torch.uint8), y)
