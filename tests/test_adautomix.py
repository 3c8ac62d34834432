"Property tests of AdAutoMix: `AdaptiveMask` against a loop reference, `mix_sources`, and `AdAutoMixCallback`'s step."
import sys, math, tempfile
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
from openmixup_nb.adautomix import AdaptiveMask, mix_sources, AdAutoMixCallback, _MixK
from openmixup_nb.callback import synth_dls
from openmixup_nb.models import create_model

FAST = settings(max_examples=40, deadline=None)
FDTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

from _helpers import gen, _seed, _one_thread # autouse fixtures: seed 0 per test, one thread per module

def sources(n, K, g):
    "Source lists (K, n): identity, then K-1 permutations"
    return torch.stack([torch.arange(n)] + [torch.randperm(n, generator=g) for _ in range(K - 1)])

def reference_masks(m, feat, indices, lams, size):
    "AdaptiveMask as loops over samples, sources and source pairs"
    K, N = indices.shape
    h, w = feat.shape[-2:]
    out = []
    for n in range(N):
        fs = [feat[indices[k, n]].double()[None] for k in range(K)]
        if m.lam_concat:
            lam = torch.as_tensor(lams, dtype=torch.float64).reshape(K, -1).expand(K, N)
            fs = [torch.cat([f, torch.full((1, 1, h, w), float(lam[k, n]), dtype=torch.float64)], 1) for k, f in enumerate(fs)]
        conv = lambda c, f: F.conv2d(f, c.weight.double(), c.bias.double())
        act = F.relu if m.qk_relu else (lambda t: t) # OpenMixup's conv_q/conv_k: ConvModule, conv -> ReLU
        q = [act(conv(m.conv_q, f)).flatten(2)[0].T for f in fs]
        kk = [act(conv(m.conv_k, f)).flatten(2)[0] for f in fs]
        v = [conv(m.conv_v, f).flatten(2)[0].T for f in fs]
        scale = math.sqrt(m.inter_channels) if m.use_scale else 1.
        maps = []
        for i in range(K):
            a = sum(q[i] @ kk[j] for j in range(K) if j != i) / scale
            maps.append((a.softmax(-1) @ v[i]).view(1, 1, h, w))
        kw = {} if m.upsample == 'nearest' else {'align_corners': False}
        out.append(F.interpolate(torch.cat(maps, 1), size=size, mode=m.upsample, **kw).softmax(1))
    return torch.cat(out).float()

@st.composite
def cases(draw, dtypes=FDTYPES):
    n, K, c = draw(st.integers(1, 5)), draw(st.integers(2, 4)), draw(st.integers(1, 8))
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    H, W = draw(st.integers(1, 21)), draw(st.integers(1, 21))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    feat = torch.randn(n, c, h, w, generator=g).relu().to(dtype)
    lams = torch.rand(K, generator=g) if draw(st.booleans()) else torch.rand(K, n, generator=g)
    return feat, sources(n, K, g), lams, (H, W), dict(reduction=draw(st.integers(1, 3)), lam_concat=draw(st.booleans()),
                                                      use_scale=draw(st.booleans()), upsample=draw(st.sampled_from(['bilinear', 'nearest', 'bicubic'])),
                                                      qk_relu=draw(st.booleans()))

# ---------------------------------------------------------------------------------------------- AdaptiveMask
@FAST
@given(case=cases())
def test_masks_are_a_softmax_over_sources(case):
    feat, idx, lams, size, kw = case
    m = AdaptiveMask(feat.shape[1], **kw)(feat, idx, lams, size)
    test_shape = (feat.shape[0], len(idx), *size)
    assert m.shape == test_shape and m.dtype == torch.float32
    assert torch.allclose(m.sum(1), torch.ones(()), atol=1e-5)
    assert ((m > 0) & (m < 1)).all() # the default init keeps every weight strictly inside (0, 1)

@settings(max_examples=25, deadline=None)
@given(case=cases(dtypes=[torch.float32, torch.float64]))
def test_masks_match_loop_reference(case):
    feat, idx, lams, size, kw = case
    gm = AdaptiveMask(feat.shape[1], init_std=0.3, **kw) # larger weights: masks far from uniform
    with torch.no_grad(): out, ref = gm(feat, idx, lams, size), reference_masks(gm, feat, idx, lams, size)
    assert torch.allclose(out, ref, atol=2e-5), (out - ref).abs().max()

@FAST
@given(case=cases(dtypes=[torch.float16, torch.bfloat16]))
def test_masks_under_autocast_are_float32(case):
    feat, idx, lams, size, kw = case
    gm = AdaptiveMask(feat.shape[1], init_std=0.3, **kw)
    with torch.autocast('cpu', dtype=feat.dtype): m = gm(feat, idx, lams, size)
    assert m.dtype == torch.float32 and torch.isfinite(m).all()
    assert torch.allclose(m, gm(feat.float(), idx, lams, size), atol=1e-6)

def test_two_sources_is_cross_attention():
    "K = 2: A_0 = softmax(q_0 k_1ᵀ/√C_r), A_1 = softmax(q_1 k_0ᵀ/√C_r), each map with its own value"
    gm = AdaptiveMask(6, init_std=0.3)
    feat, idx = torch.randn(3, 6, 2, 3), torch.tensor([[0, 1, 2], [2, 0, 1]])
    q, k, v = (c(feat).flatten(2) for c in (gm.conv_q, gm.conv_k, gm.conv_v)) # (N, ., hw)
    q, k = q.relu(), k.relu() # conv_q, conv_k are conv -> ReLU
    a, b = idx
    r0 = ((q[a].transpose(1, 2) @ k[b]) / math.sqrt(3)).softmax(-1) @ v[a].transpose(1, 2)
    r1 = ((q[b].transpose(1, 2) @ k[a]) / math.sqrt(3)).softmax(-1) @ v[b].transpose(1, 2)
    r = torch.cat([r0, r1], 2).transpose(1, 2).reshape(3, 2, 2, 3)
    assert torch.allclose(gm(feat, idx, None, (2, 3)), r.softmax(1), atol=1e-6)

def _lam_masks(m, feat, idx, lams, size, proj):
    "AdaptiveMask's masks (lam_concat) with q and k from `proj(conv, features with the λ channel)`"
    K, N = idx.shape
    h, w = feat.shape[-2:]
    fs = torch.cat([feat[idx], lams.view(K, 1, 1, 1, 1).expand(K, N, 1, h, w)], 2).flatten(0, 1) # (K·N, C+1, h, w)
    q, k = (proj(c, fs).flatten(2).view(K, N, m.inter_channels, h*w) for c in (m.conv_q, m.conv_k))
    v = m.conv_v(fs).flatten(2).view(K, N, 1, h*w)
    att = q.transpose(-2, -1) @ (k.sum(0) - k) / math.sqrt(m.inter_channels)
    r = (att.softmax(-1) @ v.transpose(-2, -1)).view(K, N, h, w).transpose(0, 1)
    return F.interpolate(r, size=size, mode='bilinear', align_corners=False).softmax(1)

def test_qk_relu_is_applied_after_the_lam_channel():
    "OpenMixup's conv_q/conv_k are ConvModules (conv -> ReLU) on the λ-concatenated features: the ReLU is there and matters"
    C = 8
    m = AdaptiveMask(C, lam_concat=True, init_std=0.3)
    assert m.qk_relu # the default, as OpenMixup
    with torch.no_grad(): m.conv_q.weight[:, C] = m.conv_k.weight[:, C] = -0.6 # the λ term pulls q and k below zero
    feat, idx, lams = torch.randn(5, C, 3, 3).relu(), sources(5, 3, gen(1)), torch.tensor([0.6, 0.3, 0.1])
    fl = torch.cat([feat, torch.full((5, 1, 3, 3), 0.6)], 1)
    assert (m.conv_q(fl) < 0).any() and (m.conv_q(fl) > 0).any() and (m.conv_k(fl) < 0).any()
    with torch.no_grad():
        out = m(feat, idx, lams, (9, 9))
        relu_after = _lam_masks(m, feat, idx, lams, (9, 9), lambda c, t: c(t).relu())
        no_relu = _lam_masks(m, feat, idx, lams, (9, 9), lambda c, t: c(t))
        relu_before = _lam_masks(m, feat, idx, lams, (9, 9), lambda c, t: F.conv2d(t[:, :C], c.weight[:, :C], c.bias).relu()
                                                                        + t[:, C:] * c.weight[:, C].view(1, -1, 1, 1))
        old = AdaptiveMask(C, lam_concat=True, qk_relu=False)
        old.load_state_dict(m.state_dict())
        out_old = old(feat, idx, lams, (9, 9))
    assert torch.allclose(out, relu_after, atol=1e-6)
    assert torch.allclose(out_old, no_relu, atol=1e-6)
    assert (out - no_relu).abs().max() > 1e-2 and (out - relu_before).abs().max() > 1e-2

def test_qk_relu_keeps_state_dict_keys(tmp_path):
    "A ReLU has no parameters: a generator saved without it (old checkpoints) loads strictly into one with it, and back"
    for lam_concat in (False, True):
        old, new = AdaptiveMask(8, lam_concat=lam_concat, qk_relu=False), AdaptiveMask(8, lam_concat=lam_concat)
        assert list(old.state_dict()) == list(new.state_dict()) == ['conv_q.weight', 'conv_q.bias', 'conv_k.weight', 'conv_k.bias', 'conv_v.weight', 'conv_v.bias']
        torch.save(old.state_dict(), tmp_path / 'old.pth')
        new.load_state_dict(torch.load(tmp_path / 'old.pth'), strict=True)
        old.load_state_dict(new.state_dict(), strict=True)
        assert all(torch.equal(a, b) for a, b in zip(old.state_dict().values(), new.state_dict().values()))

def test_generator_gets_gradients_through_mix():
    gm = AdaptiveMask(8)
    feat, x = torch.randn(4, 8, 3, 3).relu(), torch.randn(4, 3, 9, 9)
    idx = sources(4, 3, gen(0))
    mix_sources(x, gm(feat, idx, None, (9, 9)), idx).square().mean().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in gm.parameters())

def test_bad_inputs_name_the_argument():
    gm, feat, idx = AdaptiveMask(8), torch.randn(4, 8, 3, 3), sources(4, 3, gen(0))
    bad = [(lambda: gm(feat, idx[:1], None, (9, 9)), 'K >= 2'), (lambda: gm(feat, idx[:, :3], None, (9, 9)), 'indices has 3'),
           (lambda: gm(feat, idx.float(), None, (9, 9)), 'indices must'), (lambda: gm(feat[:, :4], idx, None, (9, 9)), 'built for 8'),
           (lambda: gm(feat.long(), idx, None, (9, 9)), 'feat must'), (lambda: gm(feat, idx, None, (9, 0)), 'size must'),
           (lambda: gm(feat, idx, None, 9), 'size must'), (lambda: AdaptiveMask(8, lam_concat=True)(feat, idx, None, (9, 9)), 'lams is needed'),
           (lambda: AdaptiveMask(8, lam_concat=True)(feat, idx, torch.rand(2), (9, 9)), 'lams must'),
           (lambda: AdaptiveMask(8, reduction=0), 'reduction'), (lambda: AdaptiveMask(8, upsample='area'), 'upsample')]
    for f, msg in bad:
        with pytest.raises(ValueError, match=msg): f()

# ---------------------------------------------------------------------------------------------- mix_sources
@FAST
@given(n=st.integers(1, 5), K=st.integers(1, 4), H=st.integers(1, 9), W=st.integers(1, 9), seed=st.integers(0, 2**31 - 1),
       dtype=st.sampled_from(FDTYPES), bcast=st.booleans())
def test_mix_sources_is_the_weighted_sum(n, K, H, W, seed, dtype, bcast):
    g = gen(seed)
    x, idx = torch.randn(n, 3, H, W, generator=g).to(dtype), sources(n, K, g)
    masks = torch.rand(1 if bcast else n, K, 1 if bcast else H, W, generator=g).softmax(1)
    out = mix_sources(x, masks, idx)
    assert out.dtype == dtype and out.shape == x.shape
    ref = sum(masks[:, k:k+1].double() * x.double()[idx[k]] for k in range(K))
    tol = 1e-5 if dtype in (torch.float32, torch.float64) else 3e-2
    assert torch.allclose(out.double(), ref, atol=tol, rtol=tol)
    xs = x.double()[idx] # convex: every pixel between the smallest and largest of its sources
    assert (out.double() >= xs.amin(0) - tol).all() and (out.double() <= xs.amax(0) + tol).all()

def test_one_hot_masks_select_a_source():
    x, idx = torch.randn(5, 3, 4, 4), sources(5, 3, gen(1))
    for k in range(3):
        assert torch.equal(mix_sources(x, F.one_hot(torch.tensor(k), 3).float().view(1, 3, 1, 1), idx), x[idx[k]])

def test_mix_sources_bad_shapes():
    x, idx = torch.randn(4, 3, 5, 5), sources(4, 3, gen(0))
    for f, msg in [(lambda: mix_sources(x, torch.rand(4, 2, 5, 5), idx), 'masks must'), (lambda: mix_sources(x, torch.rand(4, 3, 4, 5), idx), 'masks must'),
                   (lambda: mix_sources(x, torch.rand(3, 3, 5, 5), idx), 'masks must'), (lambda: mix_sources(x, torch.rand(4, 3, 5, 5), idx[:, :2]), 'indices has 2'),
                   (lambda: mix_sources(x[0], torch.rand(4, 3, 5, 5), idx), 'x must')]:
        with pytest.raises(ValueError, match=msg): f()

# ---------------------------------------------------------------------------------------------- the K-way target
@FAST
@given(n=st.integers(1, 6), K=st.integers(2, 4), seed=st.integers(0, 2**31 - 1))
def test_k_way_loss_is_soft_target_cross_entropy(n, K, seed):
    g = gen(seed)
    y, idx = torch.randint(0, 5, (n,), generator=g), sources(n, K, g)
    lams = (torch.rand(K, generator=g) + 0.01).tolist(); lams = [l / sum(lams) for l in lams]
    ys = tuple(y[i] for i in idx)
    res = _MixK(torch.zeros(n, 1), ys[0], ys[1], torch.full((n,), lams[0]), idx[1], ys=ys, lams=tuple(lams))
    t, pred = res.soft_target(5), torch.randn(n, 5, generator=g)
    assert torch.allclose(t.sum(1), torch.ones(n)) and (t >= 0).all()
    ce = -(t * pred.log_softmax(1)).sum(1)
    assert torch.allclose(res.loss(pred, CrossEntropyLossFlat()), ce.mean(), atol=1e-5)
    assert torch.allclose(res.loss(pred, nn.CrossEntropyLoss(reduction='none')), ce, atol=1e-5)

# ---------------------------------------------------------------------------------------------- the callback
def _learner(cb, **kw):
    return Learner(synth_dls(n=32, shape=(3, 16, 16), bs=8), create_model('resnet18', num_classes=3, width=0.125),
                   loss_func=CrossEntropyLossFlat(), cbs=cb, **kw)

def _step(cb, x, y):
    learn = cb.learn
    learn.training = True
    learn.model.train()
    cb('before_train')
    learn.xb, learn.yb = (x,), (y,)
    cb('before_batch')
    pred = learn.model(*learn.xb) # the classifier's batch, as fastai feeds it
    return pred, {'mix': cb.res.loss(pred, cb.old_lf), **cb.branch_losses(pred, y)}

def _done(cb): cb('after_batch'); cb('after_train')

@pytest.fixture(scope='module')
def trained():
    torch.manual_seed(0)
    cb = AdAutoMixCallback(split_backward=False) # keep every term's graph
    learn = _learner(cb)
    learn.create_opt(); cb('before_fit') # the EMA encoder and the generator, built as a fit builds them
    return cb, learn.dls.one_batch()

def _reaches(loss, ps):
    return any(g is not None and g.abs().sum() > 0 for g in torch.autograd.grad(loss, ps, retain_graph=True, allow_unused=True))

@pytest.mark.parametrize('step', [0, 1])
def test_gradients_reach_only_their_branch(trained, step):
    cb, (x, y) = trained
    cb.gen_steps = step
    _, parts = _step(cb, x, y)
    model_ps, gen_ps = list(cb.learn.model.parameters()), list(cb.mixblock.parameters())
    assert set(parts) == ({'mix', 'one', 'lin', 'gen', 'cos'} if step == 0 else {'mix', 'one', 'lin', 'gen'})
    for k, v in parts.items():
        model_side = k in ('mix', 'one', 'lin')
        assert _reaches(v, model_ps) == model_side and _reaches(v, gen_ps) != model_side, k
    assert not any(p.requires_grad for p in cb.ema.parameters())
    assert cb.res.x.grad_fn is None and cb._lin.x.grad_fn is None # the classifier's inputs carry no gradient
    _done(cb)

def test_adversarial_step_flips_generator_gradient(trained):
    cb, (x, y) = trained
    cb.ema_train = False
    grads = []
    for step in (1, 0):
        cb.gen_steps = step
        torch.manual_seed(3)
        _, parts = _step(cb, x, y)
        grads.append(torch.cat([g.flatten() for g in torch.autograd.grad(parts['gen'], list(cb.mixblock.parameters()))]))
        _done(cb)
    cb.ema_train = True
    coop, adv = grads
    assert (adv + cb._opt('beta') * coop).abs().max() <= 1e-4 * coop.abs().max()

def test_cosine_term_rewards_similarity_to_sources(trained):
    "Adversarial steps: cos part == (1-β)(1-S) with S the λ-weighted cosine of EMA(mix) and EMA(source k)"
    cb, (x, y) = trained
    cb.ema_train, cb.gen_steps = False, 0
    _, parts = _step(cb, x, y)
    mb = cb._mb
    with torch.no_grad():
        z = cb.ema(mb.x)
        s = sum(l * F.cosine_similarity(z, cb.ema(x[i]), dim=-1) for l, i in zip(mb.lams, mb.extra['indices'])).mean()
    beta = cb._opt('beta')
    assert torch.allclose(parts['cos'], (1 - beta) * (1 - s), atol=1e-5)
    _done(cb)
    cb.ema_train = True

@pytest.mark.parametrize('K', [2, 3, 4])
def test_margin_gives_linear_k_mixup(trained, K):
    cb, (x, y) = trained
    cb.mix_samples, cb.lam_margin = K, 0.4999
    _step(cb, x, y)
    res = cb.res
    assert res.lams[0] <= 0.4999 or res.lams[0] >= 0.5001
    assert torch.allclose(res.x, sum(l * x[i] for l, i in zip(res.lams, res.extra['indices'])), atol=1e-6)
    if K > 2: assert torch.equal(res.x, cb._lin.x)
    _done(cb)
    cb.lam_margin = 0.
    _step(cb, x, y)
    assert cb.res.extra['masks'].shape == (8, K, 16, 16) # outside the margin: the generator's masks
    _done(cb)
    cb.mix_samples, cb.lam_margin = None, 0.03

@pytest.mark.parametrize('K', [2, 3])
def test_draws(trained, K):
    "Source 0 is the sample itself, the others permutations; K = 2: separate λ per branch; K >= 3: shared, normalised"
    cb, (x, y) = trained
    cb.mix_samples = K
    _step(cb, x, y)
    mb, res, n = cb._mb, cb.res, len(x)
    for r in (mb, res):
        idx = r.extra['indices']
        assert idx.shape == (K, n) and torch.equal(idx[0], torch.arange(n)) and torch.equal(r.y_a, y)
        assert all(torch.equal(i.sort().values, torch.arange(n)) for i in idx)
        assert abs(sum(r.lams) - 1) < 1e-6 and all(l > 0 for l in r.lams)
    assert not torch.equal(mb.extra['indices'], res.extra['indices'])
    assert (mb.lams != res.lams) if K == 2 else (mb.lams == res.lams)
    _done(cb)
    cb.mix_samples = None

def test_ema_of_permuted_batch_is_permuted_ema(trained):
    "Why one EMA forward of the clean batch gives every source's prediction (train-mode batch norm included)"
    cb, (x, _) = trained
    cb.ema.train()
    idx = torch.randperm(len(x))
    with torch.no_grad(): assert torch.allclose(cb.ema(x[idx]), cb.ema(x)[idx], atol=1e-5)

def test_save_load_continues_schedule():
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        cb = AdAutoMixCallback()
        learn = _learner(cb, path=d)
        learn.fit(1, 1e-3)
        assert cb.gen_steps == 4 # one per training batch
        cb.gen_steps = 5
        learn.save('m')
        cb2 = AdAutoMixCallback()
        _learner(cb2, path=d).load('m')
    assert cb2.gen_steps == 5
    for a, b in zip(cb.mix_modules.state_dict().values(), cb2.mix_modules.state_dict().values()): assert torch.equal(a, b)

@pytest.mark.parametrize('n', [1, 2, 5])
def test_small_and_odd_batches(trained, n):
    cb, (x, y) = trained
    for step in (0, 1):
        cb.gen_steps = step
        _, parts = _step(cb, x[:n], y[:n])
        loss = sum(parts.values())
        assert cb.res.x.shape == (n, 3, 16, 16) and torch.isfinite(loss)
        loss.backward()
        _done(cb)
    cb.learn.opt.zero_grad()

def _step_grads(cb, x, y, step):
    ps = [*cb.learn.model.parameters(), *cb.mixblock.parameters()]
    for p in ps: p.grad = None
    cb.gen_steps = step
    torch.manual_seed(5)
    pred, _ = _step(cb, x, y)
    cb.loss(pred, y).backward()
    _done(cb)
    return [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in ps]

def test_split_backward_gives_the_joint_gradient(trained):
    cb, (x, y) = trained
    cb2 = AdAutoMixCallback() # split_backward=True
    learn2 = _learner(cb2)
    learn2.model.load_state_dict(cb.learn.model.state_dict())
    learn2.create_opt(); cb2('before_fit'); cb2.load_state_dict(cb.state_dict())
    for step in (0, 1):
        for a, b in zip(_step_grads(cb, x, y, step), _step_grads(cb2, x, y, step)): assert torch.allclose(a, b, atol=1e-5)
    cb2('after_fit')

def test_constructor_checks():
    for kw, msg in [(dict(mix_samples=1), 'mix_samples'), (dict(lam_margin=0.5), 'lam_margin'), (dict(mixup_ratio=-0.1), 'mixup_ratio'),
                    (dict(beta=2.), 'beta'), (dict(adv_interval=0), 'adv_interval'), (dict(config='x'), 'config'), (dict(weights=(1,)), 'weights')]:
        with pytest.raises(ValueError, match=msg): AdAutoMixCallback(**kw)
