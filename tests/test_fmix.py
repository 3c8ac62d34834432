"Property tests of FMix: `fmix_mask`, `fmix` and `FMixCallback`, with a check against the authors' numpy algorithm."
import sys, math
from pathlib import Path
import numpy as np
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.fmix import fmix, fmix_mask, FMixCallback, _low_freq, _binarise, _beta_ab
from openmixup_nb.callback import synth_dls

FAST = settings(max_examples=40, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

from _helpers import gen, distinct


def floor_ceil(lam, hw):
    t = lam.double() * hw
    return t.floor(), t.ceil()

@st.composite
def batches(draw, min_n=1, max_n=6, max_hw=12, dtypes=DTYPES):
    n, c = draw(st.integers(min_n, max_n)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    return distinct(torch.randn(n, c, h, w, generator=g).to(dtype)), torch.randint(0, 5, (n,), generator=g), seed

# ---------------------------------------------------------------------------------------------- masks
@FAST
@given(lam=st.lists(st.floats(0, 1, width=32), min_size=1, max_size=8), h=st.integers(1, 40), w=st.integers(1, 40),
       decay=st.sampled_from([0., 1., 3., 5.5]), seed=st.integers(0, 2**31 - 1))
def test_mask_binary_with_floor_or_ceil_ones(lam, h, w, decay, seed):
    lam = torch.tensor(lam)
    m = fmix_mask(lam, (h, w), decay_power=decay, generator=gen(seed))
    assert m.shape == (len(lam), 1, h, w) and m.dtype == torch.bool
    k = m.sum((1, 2, 3)).double()
    lo, hi = floor_ceil(lam, h * w)
    assert ((k == lo) | (k == hi)).all()
    assert ((m.double().mean((1, 2, 3)) - lam.double()).abs() <= 1 / (h * w) + 1e-12).all()
    assert torch.equal(m, fmix_mask(lam, (h, w), decay_power=decay, generator=gen(seed)))  # the RNG alone decides

def test_floor_and_ceil_both_happen():
    lam = torch.full((400,), 0.5 + 0.3 / 64)  # λ·hw = 32.3 on 8×8
    k = fmix_mask(lam, (8, 8), generator=gen(0)).sum((1, 2, 3))
    assert set(k.tolist()) == {32, 33} and 0.4 < (k == 33).float().mean() < 0.6

@FAST
@given(lam=st.lists(st.floats(0, 1, width=32), min_size=1, max_size=8), h=st.integers(1, 30), w=st.integers(1, 30),
       max_soft=st.floats(0.01, 0.5), seed=st.integers(0, 2**31 - 1))
def test_soft_mask(lam, h, w, max_soft, seed):
    lam = torch.tensor(lam)
    m = fmix_mask(lam, (h, w), max_soft=max_soft, generator=gen(seed))
    assert m.dtype == torch.float32 and ((m >= 0) & (m <= 1)).all()
    lo, hi = floor_ceil(lam, h * w)
    s = m.double().sum((1, 2, 3))
    assert (((s - lo).abs() < 1e-3) | ((s - hi).abs() < 1e-3)).all()  # the ramp keeps the sum

def fmix_numpy(spec_re, spec_im, h, w, decay, num, soft=0):
    "The authors' `make_low_freq_image` + `binarise_mask` (FMix repo, numpy), on given noise, number of ones and ramp"
    fy = np.fft.fftfreq(h)[:, None]
    fx = np.fft.fftfreq(w)[: w // 2 + 2] if w % 2 == 1 else np.fft.fftfreq(w)[: w // 2 + 1]
    freqs = np.sqrt(fx * fx + fy * fy)
    scale = np.ones(1) / (np.maximum(freqs, np.array([1. / max(w, h)])) ** decay)
    pad = freqs.shape[1] - spec_re.shape[1]  # the extra column of odd widths (irfftn drops it)
    re, im = (np.pad(a, ((0, 0), (0, pad))) for a in (spec_re, spec_im))
    z = np.real(np.fft.irfftn(scale * re + 1j * scale * im, (h, w), axes=(0, 1)))
    z = (z - z.min()) / (z.max() - z.min())
    idx = z.reshape(-1).argsort()[::-1]
    mask = z.reshape(-1).copy()
    lo, hi = num - soft, num + soft
    mask[idx[:hi]] = 1; mask[idx[lo:]] = 0; mask[idx[lo:hi]] = np.linspace(1, 0, hi - lo)
    return z.reshape(h, w), mask.reshape(h, w)

@pytest.mark.parametrize('h,w', [(32, 32), (7, 10), (9, 5), (1, 6), (16, 1)])
@pytest.mark.parametrize('decay', [1., 3.])
def test_matches_authors_numpy_algorithm(h, w, decay):
    "Same noise, same k and ramp: the low-frequency image (up to FMix's min-max scaling) and the mask equal the numpy code's"
    n = 6
    z = _low_freq(n, h, w, decay, generator=gen(1)).double()
    noise = torch.randn(n, 2, h, w // 2 + 1, generator=gen(1), dtype=torch.float32).double().numpy()
    num = torch.randint(0, h * w + 1, (n,), generator=gen(2))
    for soft in (None, torch.minimum(num, h * w - num) // 3):
        ours = _binarise(z.float(), num, soft)
        for i in range(n):
            zi, mi = fmix_numpy(noise[i, 0], noise[i, 1], h, w, decay, int(num[i]), 0 if soft is None else int(soft[i]))
            zt = z[i].view(h, w).numpy(); zt = (zt - zt.min()) / max(zt.max() - zt.min(), 1e-300)
            if h * w > 1: assert np.abs(zt - zi).max() < 1e-5
            if h * w > 1 and len(np.unique(np.round(zi, 6))) == h * w:  # no near-ties, so the ranks are the same
                assert np.abs(ours[i].view(h, w).double().numpy() - mi).max() < 1e-6

def test_soft_width_as_fmix():
    "FMix's ramp half-width: int(hw · max_soft), narrowed to min(λ, 1-λ) when max_soft exceeds it"
    for lam, max_soft, soft in [(0.5, 0.1, 6), (0.05, 0.1, 3), (0.97, 0.2, 1), (0.3, 0.5, 19)]:
        m = fmix_mask(lam, (8, 8), max_soft=max_soft, generator=gen(0))[0, 0].flatten()
        assert int(((m > 0) & (m < 1)).sum()) in (2 * soft - 2, 2 * soft - 1, 2 * soft)  # the ramp's ends are 1 and 0

def test_binarise_exact_k_with_ties():
    z = torch.zeros(4, 50)
    z[1, :10] = 1.
    num = torch.tensor([0, 10, 26, 50])
    m = _binarise(z, num)
    assert torch.equal(m.sum(1), num) and m[1, :10].all()

def test_low_frequency():
    "Spectral energy below 1/8 cycle/pixel: most of it for FMix masks, little for random binary masks"
    def low_share(m, cutoff=0.125):
        m = m.float(); m = m - m.mean((1, 2), keepdim=True)
        p = torch.fft.rfft2(m).abs() ** 2
        f = (torch.fft.fftfreq(m.shape[1])[:, None] ** 2 + torch.fft.rfftfreq(m.shape[2])[None] ** 2).sqrt()
        return (p * (f < cutoff)).sum((1, 2)) / p.sum((1, 2))
    g = gen(0)
    for h, w in [(32, 32), (31, 45)]:
        lam = 0.2 + 0.6 * torch.rand(64, generator=g)
        fm = fmix_mask(lam, (h, w), generator=g)[:, 0]
        rnd = torch.rand(64, h, w, generator=g) < lam.view(-1, 1, 1)
        assert low_share(fm).min() > 0.5 and low_share(rnd).max() < 0.15
        assert low_share(fm).mean() > 5 * low_share(rnd).mean()
    # larger δ: smoother masks, fewer boundary pixels
    lam = torch.full((64,), 0.5)
    edges = [(m[..., 1:, :] != m[..., :-1, :]).float().mean() for m in
             (fmix_mask(lam, (32, 32), decay_power=d, generator=gen(3)) for d in (1., 3., 5.))]
    assert edges[0] > edges[1] > edges[2]

def test_beta_ab():
    for a, b in [(1.2, 0.2), (2., 1.), (0.01, 1.01)]:
        l = _beta_ab(a, b, 40000, generator=gen(0)).double()
        assert torch.isfinite(l).all() and ((l >= 0) & (l <= 1)).all()
        assert abs(l.mean() - a / (a + b)) < 0.01
        assert abs(l.var() - a * b / ((a + b)**2 * (a + b + 1))) < 0.01

# ---------------------------------------------------------------------------------------------- the mixed batch
@FAST
@given(b=batches(), mode=st.sampled_from(['batch', 'sample']), alpha=st.sampled_from([0.2, 1., 4.]),
       pairing=st.sampled_from(['perm', 'derangement', 'flip']), soft=st.booleans())
def test_mix_under_mask(b, mode, alpha, pairing, soft):
    x, y, seed = b
    n = len(x); x0 = x.clone()
    res = fmix(x, y, alpha, lam_mode=mode, pairing=pairing, max_soft=0.2 if soft else 0., generator=gen(seed))
    assert torch.equal(x, x0)
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x.float()).all()
    assert res.lam.shape == (n,) and res.lam.dtype == torch.float32 and ((res.lam >= 0) & (res.lam <= 1)).all()
    assert res.mask.shape == ((n if mode == 'sample' else 1), 1) + x.shape[-2:]
    m = res.mask.expand(n, 1, *x.shape[-2:])
    assert torch.allclose(m.mean((1, 2, 3)), res.lam, atol=1e-6)  # λ = the mask's mean
    xb = x[res.index]
    if not soft:
        keep = m.bool().expand_as(x)
        assert torch.equal(res.x[keep], x[keep]) and torch.equal(res.x[~keep], xb[~keep])
        if n > 1 and (res.index != torch.arange(n)).all():
            kept = (res.x == x).all(1).float()
            assert torch.allclose(kept.mean((1, 2)), res.lam, atol=1e-6)  # the realised pixel share
    else:
        ref = (m.double() * x.double() + (1 - m.double()) * xb.double())
        tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 0.05, torch.bfloat16: 0.3}[x.dtype]
        assert (res.x.double() - ref).abs().max() <= tol

@FAST
@given(lam=st.floats(0, 1, width=32), h=st.integers(1, 20), w=st.integers(1, 20), mode=st.sampled_from(['batch', 'sample']))
def test_explicit_lam(lam, h, w, mode):
    res = fmix(torch.randn(3, 2, h, w), None, lam=lam, lam_mode=mode, generator=gen(0))
    k = res.mask.sum((1, 2, 3)).double()
    lo, hi = floor_ceil(torch.tensor(lam), h * w)
    assert ((k == lo) | (k == hi)).all() and len(k) == (3 if mode == 'sample' else 1)
    assert ((res.lam.double() - lam).abs() <= 1 / (h * w) + 1e-7).all()

def test_mask_depends_only_on_rng():
    y = torch.arange(8)
    a = fmix(torch.randn(8, 3, 20, 17), y, 1., lam_mode='sample', generator=gen(4))
    b = fmix(torch.rand(8, 3, 20, 17) * 100, y, 1., lam_mode='sample', generator=gen(4))
    assert torch.equal(a.mask, b.mask) and torch.equal(a.lam, b.lam) and torch.equal(a.index, b.index)
    torch.manual_seed(3); c = fmix(torch.randn(8, 3, 20, 17), y, 1.)
    torch.manual_seed(3); d = fmix(torch.randn(8, 3, 20, 17), y, 1.)  # without a generator: torch's global RNG
    assert torch.equal(c.mask, d.mask)

def test_generator_leaves_global_rng_alone():
    x = torch.randn(8, 3, 16, 16)
    torch.manual_seed(123); ref = torch.rand(5)
    torch.manual_seed(123)
    fmix(x, None, lam_mode='sample', reformulate=True, generator=gen(1))
    fmix(x, None, max_soft=0.1, generator=gen(2))
    assert torch.equal(torch.rand(5), ref)

@pytest.mark.parametrize('mode', ['batch', 'sample'])
def test_identity_partner_and_single_sample(mode):
    x, y = torch.randn(6, 3, 9, 7), torch.arange(6)
    res = fmix(x, y, 1., index=torch.arange(6), lam_mode=mode)
    assert torch.equal(res.x, x) and torch.equal(res.soft_target(6), torch.eye(6))
    r1 = fmix(torch.randn(1, 3, 8, 8), torch.tensor([1]), lam_mode=mode, pairing='derangement')
    assert r1.index.tolist() == [0] and r1.x.shape == (1, 3, 8, 8)

def test_batch_mode_one_mask_sample_mode_many():
    x = torch.randn(16, 3, 16, 16)
    assert fmix(x, None, 1., generator=gen(0)).mask.shape[0] == 1
    rs = fmix(x, None, 1., lam_mode='sample', generator=gen(0))
    assert rs.mask.shape[0] == 16 and len(set(rs.lam.tolist())) > 1
    r5 = fmix(x, None, lam=0.5, lam_mode='sample', generator=gen(0))  # one λ, a mask per sample
    assert r5.mask.shape[0] == 16 and not torch.equal(r5.mask[0], r5.mask[1])
    assert fmix(x, None, lam=torch.linspace(0, 1, 16)).mask.shape[0] == 16

def test_reformulate_and_alpha():
    x = torch.randn(4000, 1, 4, 4)
    lam = fmix(x, None, 0.2, lam_mode='sample', reformulate=True, generator=gen(0)).lam
    assert abs(lam.mean() - 1.2 / 1.4) < 0.03  # Beta(α+1, α)
    lam = fmix(x, None, 0.2, lam_mode='sample', generator=gen(0)).lam
    assert abs(lam.mean() - 0.5) < 0.03 and ((lam < 0.1) | (lam > 0.9)).float().mean() > 0.5  # Beta(0.2, 0.2): U-shaped

@pytest.mark.parametrize('mode', ['batch', 'sample'])
@pytest.mark.parametrize('soft', [0., 0.1])
def test_inplace(mode, soft):
    x = torch.randn(5, 3, 12, 10); xc = x.clone()
    r = fmix(x, None, lam_mode=mode, max_soft=soft, inplace=True, generator=gen(0))
    assert r.x is x
    assert torch.equal(x, fmix(xc, None, lam_mode=mode, max_soft=soft, generator=gen(0)).x)

def test_more_dims_and_sizes():
    for shape in [(3, 2, 3, 9, 9), (4, 9, 7), (2, 1, 1, 1), (2, 3, 1, 13), (2, 3, 224, 160)]:
        for mode in ('batch', 'sample'):
            r = fmix(torch.randn(*shape), None, 1., lam_mode=mode)
            assert r.x.shape == shape and r.mask.ndim == len(shape) and r.mask.shape[-2:] == shape[-2:]

# ---------------------------------------------------------------------------------------------- bad arguments
X, Y = torch.randn(4, 3, 8, 8), torch.arange(4)

@pytest.mark.parametrize('kwargs,name', [
    (dict(alpha=0.), 'alpha'), (dict(alpha=float('nan')), 'alpha'), (dict(lam=1.5), 'lam'), (dict(lam=torch.ones(3)), 'lam'),
    (dict(index=torch.tensor([0, 1])), 'index'), (dict(index=torch.tensor([0., 1., 2., 3.])), 'index'),
    (dict(lam_mode='pixel'), 'lam_mode'), (dict(pairing='roll'), 'pairing'), (dict(generator='g'), 'generator'),
    (dict(decay_power=-1.), 'decay_power'), (dict(decay_power=float('inf')), 'decay_power'), (dict(decay_power='3'), 'decay_power'),
    (dict(max_soft=-0.1), 'max_soft'), (dict(max_soft=0.6), 'max_soft'), (dict(reformulate=1), 'reformulate')])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name): fmix(X, Y, **kwargs)

def test_bad_batches_and_masks():
    with pytest.raises(ValueError, match='labels'): fmix(X, torch.arange(5))
    with pytest.raises(ValueError, match='dimensions'): fmix(torch.randn(4, 8), Y)
    with pytest.raises(ValueError, match='floating'): fmix(torch.ones(4, 3, 8, 8, dtype=torch.long), Y)
    for size in [(4, 0), (4,), 4, (4., 4.), (True, 3)]:
        with pytest.raises(ValueError, match='size'): fmix_mask(0.5, size)
    for lam in [-0.1, 1.1, float('nan'), torch.ones(2, 2)]:
        with pytest.raises(ValueError, match='lam'): fmix_mask(lam, (4, 4))

# ---------------------------------------------------------------------------------------------- the callback
@pytest.mark.parametrize('kwargs,name', [(dict(alpha=-1), 'alpha'), (dict(decay_power=-2), 'decay_power'),
                                         (dict(max_soft=1.), 'max_soft'), (dict(pairing='x'), 'pairing'), (dict(p=-1), 'p')])
def test_callback_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name): FMixCallback(**kwargs)

@pytest.mark.parametrize('kwargs', [{}, dict(alpha=1., lam_mode='sample', max_soft=0.1)])
def test_callback_trains_and_restores_loss(kwargs):
    from fastai.learner import Learner
    from fastai.callback.progress import ProgressCallback  # noqa: F401  Learner.no_bar
    from fastai.losses import CrossEntropyLossFlat
    from fastai.torch_core import set_seed
    set_seed(0)
    lf = CrossEntropyLossFlat()
    cb = FMixCallback(generator=gen(0), **kwargs)
    learn = Learner(synth_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=lf, cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.1)
    assert learn.loss_func is lf
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])
    b = learn.dls.one_batch(); learn._split(b); learn.training = True
    cb('before_train'); cb('before_batch')
    assert cb.res is not None and learn.xb[0] is cb.res.x
    assert torch.allclose(cb.res.mask.mean((1, 2, 3)), cb.res.lam[:cb.res.mask.shape[0]])
    cb('after_train')
