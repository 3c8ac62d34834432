"Tests of method switching: `switch_choice`, `mix_switch` (batch and per-sample switching) and `MixSwitchCallback` (p, repeats)."
import sys
from functools import partial
from pathlib import Path
import numpy as np
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.core import partner_index, MixResult
from openmixup_nb.mixup import mixup
from openmixup_nb.cutmix import cutmix
from openmixup_nb.callback import synth_dls
from openmixup_nb.switch import (MIXERS, SWITCH_MODES, DEIT, RSB_A3, vanilla, switch_choice, mix_switch, MixSwitchCallback,
                                 _recipe, _switch_rows)
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
import fastai.callback.progress, fastai.callback.fp16  # noqa: F401  Learner.no_bar, Learner.to_fp16

FAST = settings(max_examples=25, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
FUSED3 = ('mixup', 'cutmix', 'vanilla')

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

from _helpers import gen

@st.composite
def batches(draw, min_n=1, max_n=6, min_hw=1, dtypes=DTYPES):
    "An image batch (N, C, H, W) with odd / non-square sizes, 1..4 channels, distinct images, a dtype and int labels"
    n, c = draw(st.integers(min_n, max_n)), draw(st.integers(1, 4))
    h, w = draw(st.integers(min_hw, 9)), draw(st.integers(min_hw, 9))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    x = (torch.rand(n, c, h, w, generator=g) + 2. * torch.arange(n).view(-1, 1, 1, 1)).to(dtype)  # images differ everywhere
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y, seed

def replay(x, y, names, alphas, probs, seed, lam_mode, pairing='perm'):
    "The documented draw order of sample switching: choices, partners, then each drawn mixer in list order"
    g = gen(seed)
    _, _, als, pr = _recipe(names, alphas, probs, 1.)
    n = len(x)
    c = switch_choice(pr, n, generator=g)[0]
    idx = partner_index(n, pairing, g)
    outs = {k: MIXERS[names[k]](x, y, als[k], index=idx, lam_mode=lam_mode, pairing=pairing, generator=g) for k in c.unique().tolist()}
    return c, idx, outs

# ---------------------------------------------------------------------------------------------- registry
def test_registry_uniform_signature():
    import inspect
    for name, f in MIXERS.items():
        ps = inspect.signature(f).parameters
        assert list(ps)[:2] == ['x', 'y'] and {'alpha', 'lam', 'index', 'lam_mode', 'pairing', 'generator'} <= set(ps), name  # by keyword
        assert ps['alpha'].default is not inspect.Parameter.empty
        x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
        r = f(x, y, generator=gen(0))
        assert isinstance(r, MixResult) and r.x.shape == x.shape and r.lam.shape == (4,)
    assert {'vanilla', 'mixup', 'cutmix'} <= set(MIXERS)

@FAST
@given(b=batches())
def test_vanilla_identity(b):
    x, y, _ = b
    r = vanilla(x, y, index=torch.randperm(len(x)))
    assert torch.equal(r.x, x) and r.x is not x and torch.equal(r.lam, torch.ones(len(x)))
    assert torch.equal(r.index, torch.arange(len(x))) and torch.equal(r.y_b, y)
    assert vanilla(x, y, inplace=True).x is x

# ---------------------------------------------------------------------------------------------- argument checks
X, Y = torch.randn(4, 3, 8, 8), torch.arange(4)

@pytest.mark.parametrize('kw,name', [
    (dict(mixers='nope'), 'mixers'), (dict(mixers=()), 'mixers'), (dict(mixers=3), 'mixers'), (dict(mixers=('mixup', 3)), 'mixers'),
    (dict(alphas=(0.8,)), 'alphas'), (dict(alphas=(0.8, 0.)), 'alphas'), (dict(alphas=(-1., 1.)), 'alphas'),
    (dict(alphas=(float('nan'), 1.)), 'alphas'), (dict(alphas='a'), 'alphas'),
    (dict(probs=(1.,)), 'probs'), (dict(probs=(-0.5, 1.5)), 'probs'), (dict(probs=(0.3, 0.3)), 'probs'),
    (dict(probs=(float('nan'), 1.)), 'probs'),
    (dict(p=-0.1), 'p must'), (dict(p=1.1), 'p must'), (dict(p='1'), 'p must'), (dict(p=True), 'p must'),
    (dict(switch_mode='elem'), 'switch_mode'), (dict(lam_mode='pixel'), 'lam_mode'), (dict(pairing='roll'), 'pairing'),
    (dict(generator=1), 'generator'), (dict(choice=2), 'choice'), (dict(choice=-1), 'choice'), (dict(choice=0.5), 'choice'),
    (dict(choice=torch.tensor([0, 1, 0, 1])), 'choice'), (dict(choice=torch.tensor([0, 1]), switch_mode='sample'), 'choice'),
    (dict(lam=1.5), 'lam'), (dict(lam=torch.rand(3)), 'lam'),
    (dict(index=torch.arange(5)), 'index'), (dict(index=torch.arange(5), switch_mode='sample'), 'index'),
])
def test_mix_switch_bad_args(kw, name):
    with pytest.raises(ValueError, match=name): mix_switch(X, Y, **kw)

def test_bad_batch():
    with pytest.raises(ValueError, match='labels'): mix_switch(X, torch.arange(3))
    with pytest.raises(ValueError, match='labels'): mix_switch(X, torch.arange(3), switch_mode='sample')
    with pytest.raises(ValueError, match='dimensions'): mix_switch(torch.randn(4, 8), Y)  # cutmix needs images
    r = mix_switch(torch.randn(4, 8), Y, ('mixup', 'vanilla'), None, switch_mode='sample')  # mixup and vanilla do not
    assert r.x.shape == (4, 8)

@pytest.mark.parametrize('kw,name', [
    (dict(repeat=0), 'repeat'), (dict(repeat=1.5), 'repeat'), (dict(repeat=True), 'repeat'),
    (dict(mixers=('vanilla',), alphas=None, repeat=2), 'repeat'),
    (dict(mixers=('mixup', 'vanilla'), alphas=None, probs=(0., 1.), repeat=2), 'repeat'),
    (dict(switch_mode='elem'), 'switch_mode'), (dict(p=2.), 'p must'), (dict(probs=(0.9, 0.2)), 'probs'),
    (dict(alphas=(0., 1.)), 'alphas'), (dict(mixers=('mixup', 'fmixx')), 'mixers'), (dict(lam_mode='x'), 'lam_mode'),
    (dict(pairing='x'), 'pairing'), (dict(generator='g'), 'generator'),
])
def test_callback_bad_args(kw, name):
    with pytest.raises(ValueError, match=name): MixSwitchCallback(**kw)

def test_switch_choice_bad_args():
    with pytest.raises(ValueError, match='probs'): switch_choice(torch.tensor([-1., 2.]))
    with pytest.raises(ValueError, match='probs'): switch_choice(torch.zeros(2))
    with pytest.raises(ValueError, match='n must'): switch_choice(torch.ones(2), n=0)
    with pytest.raises(ValueError, match='vanilla'): switch_choice(torch.ones(2), vanilla=torch.ones(3, dtype=torch.bool))

# ---------------------------------------------------------------------------------------------- choice
@settings(max_examples=10, deadline=None)
@given(w=st.lists(st.floats(0., 1.), min_size=1, max_size=5).filter(lambda w: sum(w) > 0.05), seed=st.integers(0, 2**31 - 1))
def test_choice_frequencies(w, seed):
    "Empirical frequency of each mixer -> its probability (5 standard deviations)"
    pr = torch.tensor(w, dtype=torch.float64); pr = pr / pr.sum()
    m = 20000
    c = switch_choice(pr, m, generator=gen(seed))
    assert c.shape == (1, m) and c.dtype == torch.long
    f = torch.bincount(c[0], minlength=len(w)).double() / m
    assert ((f - pr).abs() <= 5 * (pr * (1 - pr) / m).sqrt() + 1e-9).all()
    assert (f[pr == 0] == 0).all()
    assert torch.equal(c, switch_choice(pr, m, generator=gen(seed)))

@pytest.mark.parametrize('probs', [None, (0.2, 0.5, 0.3)])
def test_repeat_drops_vanilla(probs):
    "Once 'vanilla' is drawn it is not drawn again in that step; the others are renormalised"
    _, _, _, pr = _recipe(('vanilla', 'mixup', 'cutmix'), None, probs, 1.)
    van = torch.tensor([True, False, False])
    m = 30000
    c = switch_choice(pr, m, repeat=3, vanilla=van, generator=gen(1))
    assert c.shape == (3, m)
    assert ((c == 0).sum(0) <= 1).all()
    assert abs((c[0] == 0).double().mean() - pr[0]) < 0.015
    after = c[1][c[0] == 0]  # the repeat after a 'vanilla' draw
    cond = pr[1:] / pr[1:].sum()
    assert abs((after == 1).double().mean() - cond[0]) < 0.03
    free = c[1][c[0] != 0]  # not drawn before: all three candidates
    assert abs((free == 0).double().mean() - pr[0]) < 0.015

def test_p_folds_into_vanilla():
    fns, names, als, pr = _recipe(('mixup', 'cutmix'), (0.8, 1.), (0.4, 0.6), 0.7)
    assert names == ('mixup', 'cutmix', 'vanilla') and fns[2] is vanilla
    torch.testing.assert_close(pr, torch.tensor([0.28, 0.42, 0.3], dtype=torch.float64))
    _, names, _, pr = _recipe(('vanilla', 'mixup'), None, (0.5, 0.5), 0.5)
    assert names == ('vanilla', 'mixup')
    torch.testing.assert_close(pr, torch.tensor([0.75, 0.25], dtype=torch.float64))
    x = torch.rand(6, 3, 5, 5)
    for sm in SWITCH_MODES:
        r = mix_switch(x, torch.arange(6), p=0., switch_mode=sm, generator=gen(0))
        assert torch.equal(r.x, x) and torch.equal(r.lam, torch.ones(6)) and (r.extra['mixer'] == 2).all()

# ---------------------------------------------------------------------------------------------- batch switching
def test_batch_switching_frequency_and_one_mode():
    "DeiT recipe: CutMix in about half the batches, each batch entirely one mixer"
    x = torch.rand(6, 3, 8, 8) + 2. * torch.arange(6).view(-1, 1, 1, 1); y = torch.arange(6)
    g, m, cuts = gen(0), 400, 0
    for _ in range(m):
        r = mix_switch(x, y, **DEIT, generator=g)
        k = r.extra['mixer']
        assert (k == k[0]).all()
        xb = x[r.index]
        from_a, from_b = (r.x == x).all(1), (r.x == xb).all(1)  # (N, H, W)
        if k[0] == 1:  # CutMix: every pixel from one of the two images, one box for the batch
            cuts += 1
            assert (from_a | from_b).all()
            moved = r.index != torch.arange(6)  # a sample paired with itself is left as it is
            torch.testing.assert_close(from_a.float().mean((1, 2))[moved], r.lam[moved])
            kept = from_a[moved]
            assert (kept == kept[:1]).all()  # the same box for every sample
        else:  # Mixup: one λ for the batch, an exact blend
            assert (r.lam == r.lam[0]).all()
            l = r.lam.view(-1, 1, 1, 1)
            torch.testing.assert_close(r.x, l * x + (1 - l) * xb)
    assert abs(cuts / m - 0.5) < 4 * (0.25 / m) ** 0.5

@FAST
@given(b=batches(), lam_mode=st.sampled_from(['batch', 'sample']), pairing=st.sampled_from(['perm', 'flip', 'derangement']))
def test_batch_switching_is_the_drawn_mixer(b, lam_mode, pairing):
    x, y, seed = b
    x0 = x.clone()
    r = mix_switch(x, y, FUSED3, (0.8, 1., None), lam_mode=lam_mode, pairing=pairing, generator=gen(seed))
    assert torch.equal(x, x0)
    g = gen(seed)
    k = int(switch_choice(torch.ones(3) / 3, generator=g)[0, 0])
    ref = MIXERS[FUSED3[k]](x, y, (0.8, 1., 1.)[k], lam_mode=lam_mode, pairing=pairing, generator=g)
    assert torch.equal(r.x, ref.x) and torch.equal(r.lam, ref.lam) and torch.equal(r.index, ref.index)
    assert (r.extra['mixer'] == k).all() and r.extra['mixers'] == FUSED3

def test_batch_switching_inplace():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    r = mix_switch(x, y, choice=1, inplace=True, generator=gen(0))  # cutmix pastes into x
    assert r.x is x
    x2 = torch.randn(4, 3, 8, 8); x3 = x2.clone()
    mix_switch(x2, y, choice=1, generator=gen(0))
    assert torch.equal(x2, x3)

# ---------------------------------------------------------------------------------------------- sample switching
@FAST
@given(b=batches(), lam_mode=st.sampled_from(['batch', 'sample']), pairing=st.sampled_from(['perm', 'flip', 'derangement']))
def test_sample_switching_rows(b, lam_mode, pairing):
    "Each row is exactly its own mixer's row (all mixers with the same partners), with that mixer's label weight"
    x, y, seed = b
    x0, n = x.clone(), len(x)
    r = mix_switch(x, y, FUSED3, (0.8, 1., None), switch_mode='sample', lam_mode=lam_mode, pairing=pairing, generator=gen(seed))
    assert torch.equal(x, x0)
    assert r.x.shape == x.shape and r.x.dtype == x.dtype and torch.isfinite(r.x).all()
    assert r.lam.shape == (n,) and r.lam.dtype == torch.float32 and ((r.lam >= 0) & (r.lam <= 1)).all()
    c, idx, outs = replay(x, y, FUSED3, (0.8, 1., None), None, seed, lam_mode, pairing)
    assert torch.equal(r.extra['mixer'], c)
    for i, k in enumerate(c.tolist()):
        assert torch.equal(r.x[i], outs[k].x[i]) and r.lam[i] == outs[k].lam[i]
        if k == 2: assert torch.equal(r.x[i], x[i]) and r.lam[i] == 1 and r.index[i] == i and r.y_b[i] == y[i]
        else: assert r.index[i] == idx[i] and r.y_b[i] == y[idx[i]]
    # the mask is each row's weight map, its mean λ (up to the rounding of λ to the input dtype)
    tol = {torch.float16: 1e-3, torch.bfloat16: 4e-3}.get(x.dtype, 1e-6)
    torch.testing.assert_close(r.mask.mean((1, 2, 3)), r.lam, atol=tol, rtol=0)
    t = r.soft_target(5)
    torch.testing.assert_close(t.sum(1), torch.ones(n))
    e = torch.eye(5)
    torch.testing.assert_close(t, r.lam[:, None] * e[y] + (1 - r.lam[:, None]) * e[r.y_b])
    r2 = mix_switch(x, y, FUSED3, (0.8, 1., None), switch_mode='sample', lam_mode=lam_mode, pairing=pairing, generator=gen(seed))
    assert torch.equal(r.x, r2.x) and torch.equal(r.lam, r2.lam) and torch.equal(r.extra['mixer'], r2.extra['mixer'])

@FAST
@given(b=batches(min_n=2, max_n=6, min_hw=4), lam_mode=st.sampled_from(['batch', 'sample']))
def test_sample_switching_pixels(b, lam_mode):
    "Structure of each row: a blend with its λ, a box holding a share λ of the first image, or the image itself"
    x, y, seed = b
    x = x.double()
    r = mix_switch(x, y, FUSED3, (0.8, 1., None), switch_mode='sample', lam_mode=lam_mode, generator=gen(seed))
    for i, k in enumerate(r.extra['mixer'].tolist()):
        xi, xp, l = x[i], x[r.index[i]], r.lam[i].double()
        if k == 0: torch.testing.assert_close(r.x[i], l * xi + (1 - l) * xp)
        elif k == 1:
            a, bb = (r.x[i] == xi).all(0), (r.x[i] == xp).all(0)
            assert (a | bb).all()
            if r.index[i] != i: assert abs(a.double().mean() - l) < 1e-6
        else: assert torch.equal(r.x[i], xi) and l == 1

@settings(max_examples=8, deadline=None)
@given(b=batches(min_n=1, max_n=5, min_hw=4, dtypes=[torch.float32, torch.float16]), lam_mode=st.sampled_from(['batch', 'sample']))
def test_sample_switching_other_mixers(b, lam_mode):
    "Mixers that are not fused run on the whole batch; their rows are picked"
    x, y, seed = b
    names = tuple(MIXERS)
    r = mix_switch(x, y, names, None, switch_mode='sample', lam_mode=lam_mode, generator=gen(seed))
    c, idx, outs = replay(x, y, names, None, None, seed, lam_mode)
    for i, k in enumerate(c.tolist()):
        assert torch.equal(r.x[i], outs[k].x[i]) and r.lam[i] == outs[k].lam[i]

@FAST
@given(b=batches(min_n=1, max_n=6, min_hw=2), lam_mode=st.sampled_from(['batch', 'sample']))
def test_fused_equals_unfused(b, lam_mode):
    x, y, seed = b
    fns, _, als, pr = _recipe(FUSED3, (0.8, 1., None), None, 1.)
    g = gen(seed)
    c, idx = switch_choice(pr, len(x), generator=g)[0], partner_index(len(x), generator=g)
    a = _switch_rows(x, y, fns, als, c, None, idx, lam_mode, 'perm', gen(seed + 1), fuse=True)
    u = _switch_rows(x, y, fns, als, c, None, idx, lam_mode, 'perm', gen(seed + 1), fuse=False)
    assert torch.equal(a.x, u.x) and torch.equal(a.lam, u.lam) and torch.equal(a.index, u.index) and torch.equal(a.y_b, u.y_b)

@FAST
@given(b=batches(), sm=st.sampled_from(SWITCH_MODES), lam_mode=st.sampled_from(['batch', 'sample']))
def test_identity_index(b, sm, lam_mode):
    x, y, seed = b
    r = mix_switch(x, y, FUSED3, (0.8, 1., None), switch_mode=sm, lam_mode=lam_mode, index=torch.arange(len(x)), generator=gen(seed))
    assert torch.equal(r.x, x)
    assert torch.equal(r.soft_target(5), torch.eye(5)[y])

def test_explicit_lam_and_choice():
    x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
    idx = torch.tensor([1, 2, 3, 0])
    r = mix_switch(x, y, choice=torch.tensor([0, 1, 0, 1]), lam=0.75, index=idx, switch_mode='sample', generator=gen(0))
    torch.testing.assert_close(r.x[0], 0.75 * x[0] + 0.25 * x[1])
    assert r.lam[0] == 0.75 and r.lam[1] >= 0.75  # CutMix: λ₀ = 0.75, realised share at least that
    assert torch.equal(r.index, idx)

def test_batch_of_one():
    x, y = torch.randn(1, 3, 5, 5), torch.tensor([2])
    for sm in SWITCH_MODES:
        for lm in ('batch', 'sample'):
            r = mix_switch(x, y, FUSED3, (0.8, 1., None), switch_mode=sm, lam_mode=lm, generator=gen(0))
            assert torch.equal(r.x, x) and torch.equal(r.index, torch.tensor([0]))  # its own partner
            torch.testing.assert_close(r.soft_target(3), torch.eye(3)[y])

def test_float_labels_and_none():
    x = torch.randn(6, 3, 8, 8); y = torch.softmax(torch.randn(6, 4), 1)
    r = mix_switch(x, y, FUSED3, (0.8, 1., None), switch_mode='sample', generator=gen(0))
    torch.testing.assert_close(r.soft_target(), r.lam[:, None] * y + (1 - r.lam[:, None]) * y[r.index])
    r = mix_switch(x, None, switch_mode='sample', generator=gen(0))
    assert r.y_a is None and r.y_b is None

def test_user_mixer_and_partial():
    calls = []
    def mine(x, y, alpha=0.5, lam=None, index=None, lam_mode='batch', pairing='perm', generator=None):
        calls.append(alpha); return mixup(x, y, alpha, lam, index, lam_mode, pairing=pairing, generator=generator)
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    r = mix_switch(x, y, (mine, partial(cutmix, correct_lam=False)), None, switch_mode='sample', generator=gen(0))
    assert r.extra['mixers'] == ('mine', 'cutmix')
    if (r.extra['mixer'] == 0).any(): assert calls == [0.5]
    with pytest.raises(TypeError, match='MixResult'): mix_switch(x, y, (lambda x, y, **kw: x,), 1., choice=0)

# ---------------------------------------------------------------------------------------------- timm
def test_frequencies_like_timm():
    "timm's Mixup(0.8, 1.0, switch_prob=0.5) in 'batch' and 'elem' mode and mix_switch use CutMix equally often"
    from timm.data import Mixup
    np.random.seed(0)
    x = torch.rand(8, 3, 6, 6) + 2. * torch.arange(8).view(-1, 1, 1, 1); y = torch.arange(8)
    is_cut = lambda out: ((out == x) | (out == x.flip(0))).flatten(1).all(1)
    m = 300
    tb = Mixup(mixup_alpha=0.8, cutmix_alpha=1., switch_prob=0.5, mode='batch', num_classes=8)
    te = Mixup(mixup_alpha=0.8, cutmix_alpha=1., switch_prob=0.5, mode='elem', num_classes=8)
    me = 150  # batches in per-sample switching: 8 draws each
    f_tb = torch.stack([is_cut(tb(x.clone(), y)[0]) for _ in range(m)]).float()
    f_te = torch.stack([is_cut(te(x.clone(), y)[0]) for _ in range(me)]).float()
    g = gen(0)
    f_b = torch.stack([is_cut(mix_switch(x, y, **DEIT, pairing='flip', generator=g).x) for _ in range(m)]).float()
    f_s = torch.stack([is_cut(mix_switch(x, y, **DEIT, pairing='flip', switch_mode='sample', generator=g).x) for _ in range(me)]).float()
    for f in (f_tb, f_b): assert (f == f[:, :1]).all() and abs(f.mean() - 0.5) < 4 * (0.25 / m) ** 0.5
    for f in (f_te, f_s): assert not (f == f[:, :1]).all() and abs(f.mean() - 0.5) < 4 * (0.25 / (8 * me)) ** 0.5

def test_label_smoothing_like_timm():
    from timm.data.mixup import mixup_target
    from timm.loss import SoftTargetCrossEntropy
    x, y, pred = torch.randn(8, 3, 6, 6), torch.randint(0, 10, (8,)), torch.randn(8, 10)
    r = mix_switch(x, y, **DEIT, switch_mode='sample', lam_mode='sample', pairing='flip', generator=gen(0))
    tt = mixup_target(y, 10, r.lam[:, None], smoothing=0.1)
    torch.testing.assert_close(r.soft_target(10, smoothing=0.1), tt)
    torch.testing.assert_close(r.loss(pred, CrossEntropyLossFlat(label_smoothing=0.1)), SoftTargetCrossEntropy()(pred, tt))

# ---------------------------------------------------------------------------------------------- callback
def linear_learner(cb, loss_func=None, seed=0):
    torch.manual_seed(seed)
    return Learner(synth_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=loss_func or CrossEntropyLossFlat(), cbs=cb)

def one_step(cb):
    "Loss and gradients of one training step, the learner and the original batch"
    learn = linear_learner(cb)
    learn._split(learn.dls.one_batch()); learn.training = True
    x0 = learn.x.clone()
    cb('before_train'); cb('before_batch')
    loss = learn.loss_func(learn.model(learn.x), *learn.yb)
    loss.backward()
    return loss, [p.grad.clone() for p in learn.model.parameters()], learn, x0

@pytest.mark.parametrize('switch_mode', SWITCH_MODES)
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_repeat_is_mean_of_losses_and_grads(switch_mode, seed):
    names = ('mixup', 'cutmix', 'vanilla')
    cb = MixSwitchCallback(names, (0.8, 1., None), switch_mode=switch_mode, repeat=2, generator=gen(seed))
    loss, grads, learn, x0 = one_step(cb)
    assert len(cb.results) == 2
    g = gen(seed)
    n = len(x0) if switch_mode == 'sample' else 1
    c = switch_choice(cb.probs, n, 2, cb._vanilla, g)
    rs = [mix_switch(x0, learn.y, names, (0.8, 1., None), switch_mode=switch_mode, choice=c[r], generator=g) for r in range(2)]
    for a, b in zip(cb.results, rs): assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam)
    learn.model.zero_grad()
    losses = [r.loss(learn.model(r.x), CrossEntropyLossFlat()) for r in rs]
    ref = (losses[0] + losses[1]) / 2
    ref.backward()
    torch.testing.assert_close(loss, ref)
    for a, p in zip(grads, learn.model.parameters()): torch.testing.assert_close(a, p.grad)
    cb('after_batch'); cb('after_train')
    assert cb.results == [] and learn.loss_func.__class__ is CrossEntropyLossFlat

def test_repeat_one_is_plain_step():
    cb = MixSwitchCallback(**DEIT, generator=gen(3))
    loss, grads, learn, x0 = one_step(cb)
    g = gen(3)
    c = switch_choice(cb.probs, 1, 1, cb._vanilla, g)
    r = mix_switch(x0, learn.y, **DEIT, choice=c[0], generator=g)
    assert torch.equal(learn.x, r.x)
    torch.testing.assert_close(loss, r.loss(learn.model(r.x), CrossEntropyLossFlat()))

def test_vanilla_batch_gives_plain_loss():
    cb = MixSwitchCallback(**DEIT, p=0.)
    loss, _, learn, x0 = one_step(cb)
    assert torch.equal(learn.x, x0)
    torch.testing.assert_close(loss, CrossEntropyLossFlat()(learn.model(x0), learn.y))

@pytest.mark.parametrize('kw', [dict(), dict(switch_mode='sample', lam_mode='sample', p=0.8), dict(repeat=3, p=0.5),
                                dict(switch_mode='sample', repeat=2)])
def test_callback_trains_and_restores_loss(kw):
    lf = CrossEntropyLossFlat(label_smoothing=0.1)
    learn = linear_learner(MixSwitchCallback.deit(**kw), lf)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.1)
    assert learn.loss_func is lf and np.isfinite(learn.recorder.values[-1]).all()

def test_callback_fp16_wiring():
    import warnings
    learn = linear_learner(MixSwitchCallback.rsb_a3(repeat=2)).to_fp16()
    with warnings.catch_warnings(), learn.no_bar(), learn.no_logging():
        warnings.simplefilter('ignore')
        learn.fit(1, 0.1)
    assert np.isfinite(learn.recorder.values[-1]).all()

def test_presets():
    assert MixSwitchCallback.deit().alphas == (0.8, 1.) and MixSwitchCallback.rsb_a3().alphas == (0.1, 1.)
    cb = MixSwitchCallback.deit(p=0.5, switch_mode='sample')
    assert cb.mixers == ('mixup', 'cutmix', 'vanilla') and cb.switch_mode == 'sample'
    torch.testing.assert_close(cb.probs, torch.tensor([0.25, 0.25, 0.5], dtype=torch.float64))
    assert RSB_A3['alphas'] == (0.1, 1.) and DEIT['probs'] == (0.5, 0.5)
