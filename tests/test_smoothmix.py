"Property tests of SmoothMix: the Gaussian mask, the blend, the label weight 1 - mean(G), σ solved for an explicit λ."
import sys
from pathlib import Path
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.core import LAM_MODES, PAIRINGS
from openmixup_nb.smoothmix import smoothmix, smoothmix_sigma, SmoothMixCallback
from openmixup_nb.callback import MixCallback, MixedLoss, synth_dls

FAST = settings(max_examples=30, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
ATOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 5e-2}
GTOL = {torch.float32: 2e-6, torch.float64: 2e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}  # G rounded to x's dtype

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

from _helpers import gen, Probe

@st.composite
def batches(draw, min_n=1, max_n=6, dtypes=DTYPES, min_side=1, max_side=12):
    "An image batch (N, C, H, W) with odd / non-square sizes, 1..4 channels, a dtype and int labels"
    n, c = draw(st.integers(min_n, max_n)), draw(st.integers(1, 4))
    h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y, seed

def gauss_ref(res, H, W):
    "G recomputed in float64 from the result's centre and σ (pixels): (n, H, W)"
    c, s = res.extra['center'].double(), res.extra['sigma'].double()
    py, px = torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64)
    zy = (py - c[:, :1]) / s[:, :1]
    zx = (px - c[:, 1:]) / s[:, 1:]
    return torch.exp(-0.5 * zy[:, :, None] ** 2 - 0.5 * zx[:, None, :] ** 2)

# ---------------------------------------------------------------------------------------------- the blend
@FAST
@given(b=batches(), lam_mode=st.sampled_from(LAM_MODES), pairing=st.sampled_from(PAIRINGS),
       how=st.sampled_from(['range', 'beta', 'lam', 'lams']), data=st.data())
def test_smoothmix_formula(b, lam_mode, pairing, how, data):
    x, y, seed = b
    n, H, W = len(x), *x.shape[-2:]
    x0 = x.clone()
    kw = dict(sigma=None) if how == 'beta' else {}
    if how == 'lam': kw['lam'] = data.draw(st.floats(0, 1))
    if how == 'lams': kw['lam'] = torch.rand(n, generator=gen(seed + 1))
    res = smoothmix(x, y, 1., lam_mode=lam_mode, pairing=pairing, generator=gen(seed), **kw)
    assert torch.equal(x, x0) and res.x is not x  # input untouched
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x).all()
    m = res.mask
    per_sample = lam_mode == 'sample' or how == 'lams'
    assert m.dtype == torch.float32 and m.shape == ((n if per_sample else 1), 1, H, W)
    G = 1 - m[:, 0]
    assert (G >= 0).all() and (G <= 1).all()
    assert (G.amax((1, 2)) == 1).all()  # the peak, exactly 1 on the centre pixel
    # G is the Gaussian of the reported centre and σ (σ_y ∝ H, σ_x ∝ W)
    # (the mask is stored as the blend used it: rounded to x's dtype)
    torch.testing.assert_close(G.double(), gauss_ref(res, H, W), atol=GTOL[x.dtype], rtol=0)
    s = res.extra['sigma']
    torch.testing.assert_close(s[:, 0] / H, s[:, 1] / W)
    # x_mix = (1-G)·x + G·x[index] (the mask cast to x's dtype, as the blend uses it)
    Gx = G.double()[:, None]
    ref = (1 - Gx) * x.double() + Gx * x[res.index].double()
    torch.testing.assert_close(res.x.double(), ref, atol=ATOL[x.dtype], rtol=0)
    # the first image's label weight is its share 1 - mean(G) (OpenMixup gives it mean(G))
    torch.testing.assert_close(res.lam, (1 - G.mean((1, 2))).expand(n), atol=1e-6, rtol=0)
    assert res.lam.shape == (n,) and res.lam.dtype == torch.float32
    if not per_sample: assert (res.lam == res.lam[0]).all()
    assert torch.equal(res.y_a, y) and torch.equal(res.y_b, y[res.index])
    if how == 'range': assert ((s[:, 0] / H >= 0.25) & (s[:, 0] / H < 0.5)).all()

@FAST
@given(b=batches(min_n=2, dtypes=[torch.float32]))
def test_smoothmix_soft_target_weights(b):
    x, y, seed = b
    res = smoothmix(x, y, lam_mode='sample', pairing='derangement', generator=gen(seed))
    t = res.soft_target(5)
    e = torch.eye(5)
    torch.testing.assert_close(t, res.lam[:, None] * e[y] + (1 - res.lam[:, None]) * e[y[res.index]])
    torch.testing.assert_close(t.sum(1), torch.ones(len(x)))

# ---------------------------------------------------------------------------------------------- explicit λ
@FAST
@given(lam=st.floats(0.02, 0.98), H=st.integers(4, 64), W=st.integers(4, 64), per_sample=st.booleans(),
       seed=st.integers(0, 2**31 - 1))
def test_smoothmix_explicit_lam_realised(lam, H, W, per_sample, seed):
    "An explicit λ comes back within 1e-3 when reachable (below 1 - 1/HW, the blob of one pixel), else clamped"
    n = 5
    lam = torch.rand(n, generator=gen(seed)) * 0.96 + 0.02 if per_sample else lam
    res = smoothmix(torch.randn(n, 2, H, W), torch.arange(n), lam=lam, generator=gen(seed))
    target = torch.as_tensor(lam, dtype=torch.float32).expand(n).clamp(max=1 - 1 / (H * W))
    assert (res.lam - target).abs().max() < 1e-3
    torch.testing.assert_close(res.lam, res.mask.mean((1, 2, 3)).expand(n))

@pytest.mark.parametrize('lam_mode', LAM_MODES)
def test_smoothmix_lam_out_of_reach_is_clamped(lam_mode):
    "λ = 1 asks for no blob: the narrowest one (the centre pixel) is used, and its share returned"
    H, W = 6, 9
    x = torch.randn(3, 1, H, W)
    res = smoothmix(x, None, lam=1., lam_mode=lam_mode, generator=gen(0))
    torch.testing.assert_close(res.lam, torch.full((3,), 1 - 1 / (H * W)))
    assert ((res.mask == 0).sum((1, 2, 3)) == 1).all()
    res = smoothmix(x, None, lam=0., lam_mode=lam_mode, generator=gen(0))
    assert (res.lam < 1e-4).all() and (res.lam >= 0).all()

def test_smoothmix_sigma_solver():
    g = gen(0)
    n, H, W = 200, 24, 40
    lam = torch.rand(n, generator=g) * 0.9 + 0.05
    cy, cx = torch.randint(0, H, (n,), generator=g), torch.randint(0, W, (n,), generator=g)
    s = smoothmix_sigma(lam, cy, cx, H, W)
    assert s.shape == (n,) and s.dtype == torch.float32 and (s > 0).all()
    s = s.double()
    gy = torch.exp(-0.5 * ((torch.arange(H) - cy[:, None]) / (s[:, None] * H)) ** 2)
    gx = torch.exp(-0.5 * ((torch.arange(W) - cx[:, None]) / (s[:, None] * W)) ** 2)
    assert ((1 - gy.mean(1) * gx.mean(1)) - lam).abs().max() < 1e-4
    # larger λ (smaller blob) needs a smaller σ at a fixed centre
    s2 = smoothmix_sigma(torch.linspace(0.05, 0.95, 10), torch.full((10,), 5), torch.full((10,), 7), H, W)
    assert (s2.diff() < 0).all()

def test_smoothmix_beta_lam():
    "sigma=None: λ ~ Beta(α, α), realised; large α concentrates it at 0.5"
    res = smoothmix(torch.randn(64, 1, 16, 16), None, alpha=1e4, sigma=None, lam_mode='sample', generator=gen(0))
    assert ((res.lam - 0.5).abs() < 0.05).all()
    r1 = smoothmix(torch.randn(64, 1, 16, 16), None, alpha=0.2, sigma=None, lam_mode='sample', generator=gen(0))
    assert ((r1.lam - 0.5).abs() > 0.3).float().mean() > 0.3  # U-shaped Beta(0.2, 0.2)

def test_smoothmix_reference_distribution():
    "Defaults follow OpenMixup: σ/side ~ U[0.25, 0.5), mean(G) on 32×32 spans about 0.11-0.72, median ≈ 0.42"
    res = smoothmix(torch.zeros(4000, 1, 32, 32), None, lam_mode='sample', generator=gen(0))
    s = res.extra['sigma'][:, 0] / 32
    assert 0.25 <= s.min() < 0.26 and 0.49 < s.max() < 0.5
    partner = 1 - res.lam
    assert 0.09 < partner.min() < 0.15 and 0.68 < partner.max() < 0.76 and 0.38 < partner.median() < 0.47
    c = res.extra['center']
    assert c.min() == 0 and c.max() == 31  # centres anywhere in the image
    r = smoothmix(torch.zeros(3, 1, 8, 8), None, sigma=0.3, lam_mode='sample', generator=gen(1))
    torch.testing.assert_close(r.extra['sigma'], torch.full((3, 2), 0.3 * 8))

# ---------------------------------------------------------------------------------------------- edge cases
@FAST
@given(b=batches(), lam_mode=st.sampled_from(LAM_MODES), lam=st.one_of(st.none(), st.floats(0, 1)))
def test_smoothmix_identity_index(b, lam_mode, lam):
    x, y, seed = b
    res = smoothmix(x, y, lam=lam, lam_mode=lam_mode, index=torch.arange(len(x)), generator=gen(seed))
    assert torch.equal(res.x, x)
    assert torch.equal(res.y_b, y)

@FAST
@given(b=batches(), lam_mode=st.sampled_from(LAM_MODES), sigma=st.sampled_from([(0.25, 0.5), None]))
def test_smoothmix_deterministic_and_inplace(b, lam_mode, sigma):
    x, y, seed = b
    x0 = x.clone()
    r1 = smoothmix(x, y, lam_mode=lam_mode, sigma=sigma, generator=gen(seed))
    r2 = smoothmix(x, y, lam_mode=lam_mode, sigma=sigma, generator=gen(seed))
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.lam, r2.lam) and torch.equal(r1.index, r2.index)
    assert torch.equal(x, x0)
    r3 = smoothmix(x, y, lam_mode=lam_mode, sigma=sigma, inplace=True, generator=gen(seed))
    assert r3.x is x and torch.equal(x, r1.x) and torch.equal(r3.lam, r1.lam)

def test_smoothmix_global_rng_and_small_batches():
    x, y = torch.randn(8, 3, 9, 7), torch.arange(8)
    for lam_mode in LAM_MODES:
        torch.manual_seed(3); a = smoothmix(x, y, lam_mode=lam_mode)
        torch.manual_seed(3); b = smoothmix(x, y, lam_mode=lam_mode)
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index)
    x1 = torch.randn(1, 1, 5, 3)
    for lam_mode in LAM_MODES:  # N=1: the only partner is itself
        assert torch.equal(smoothmix(x1, torch.tensor([2]), lam_mode=lam_mode).x, x1)
    r = smoothmix(torch.randn(2, 3, 1, 1), torch.arange(2), pairing='derangement')  # a 1×1 image is all blob
    assert torch.equal(r.lam, torch.zeros(2))
    r = smoothmix(torch.randn(3, 5, 7), None, lam=0.4, index=torch.tensor([1, 2, 0]))  # (N, H, W)
    assert r.mask.shape == (1, 5, 7) and abs(float(r.lam[0]) - 0.4) < 1e-3

X6, Y6 = torch.randn(6, 3, 4, 4), torch.arange(6)
BAD_ARGS = [
    (dict(alpha=0.), 'alpha'), (dict(alpha=-1.), 'alpha'), (dict(alpha=float('nan')), 'alpha'),
    (dict(alpha=0., sigma=None), 'alpha'),
    (dict(lam=1.5), 'lam'), (dict(lam=-0.1), 'lam'), (dict(lam=float('nan')), 'lam'),
    (dict(lam=torch.rand(4)), 'lam'), (dict(lam=torch.rand(6, 1)), 'lam'),
    (dict(index=torch.arange(5)), 'index'), (dict(index=torch.arange(6) + 1), 'index'),
    (dict(index=torch.arange(6).float()), 'index'),
    (dict(lam_mode='pixel'), 'lam_mode'), (dict(pairing='roll'), 'pairing'), (dict(generator=3), 'generator'),
    (dict(sigma=0.), 'sigma'), (dict(sigma=-1.), 'sigma'), (dict(sigma=(0.5, 0.25)), 'sigma'),
    (dict(sigma=(0.1, 0.2, 0.3)), 'sigma'), (dict(sigma='wide'), 'sigma'), (dict(sigma=float('inf')), 'sigma'),
    (dict(sigma=True), 'sigma'),
]

@pytest.mark.parametrize('kwargs,name', BAD_ARGS)
def test_bad_args_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name): smoothmix(X6, Y6, **kwargs)

def test_bad_batches():
    with pytest.raises(ValueError, match='labels'): smoothmix(X6, Y6[:5])
    with pytest.raises(ValueError, match='floating'): smoothmix(X6.long(), Y6)
    with pytest.raises(ValueError, match='empty'): smoothmix(X6[:0], Y6[:0])
    with pytest.raises(ValueError, match='dimensions'): smoothmix(torch.randn(6, 4), Y6)

# ---------------------------------------------------------------------------------------------- callback
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.losses import CrossEntropyLossFlat
from fastai.optimizer import SGD
from fastai.torch_core import set_seed
import fastai.callback.progress  # noqa: F401  Learner.no_bar


@pytest.mark.parametrize('cb', [lambda: SmoothMixCallback(), lambda: SmoothMixCallback(sigma=None, alpha=1., lam_mode='sample')])
def test_callback_trains_and_restores(tmp_path, cb):
    set_seed(0)
    probe = Probe()
    learn = Learner(synth_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=CrossEntropyLossFlat(),
                    opt_func=SGD, lr=0.1, cbs=[cb(), probe], path=tmp_path)
    lf = learn.loss_func
    with learn.no_logging(), learn.no_bar(): learn.fit(1, 0.1)
    assert learn.loss_func is lf
    assert len(probe.log) == 8 and all(m and w and d < 1e-5 for m, w, d in probe.log)

def test_callback_bad_args():
    with pytest.raises(ValueError, match='sigma'): SmoothMixCallback(sigma=(1, 0.5))
    with pytest.raises(ValueError, match='alpha'): SmoothMixCallback(alpha=0)
    with pytest.raises(ValueError, match='lam_mode'): SmoothMixCallback(lam_mode='x')
    with pytest.raises(ValueError, match='p must'): SmoothMixCallback(p=2)
