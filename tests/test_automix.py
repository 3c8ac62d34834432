"Property tests of AutoMix/SAMix: `automix_pair`, the EMA (`ema_update_`, `cosine_momentum`) and the callbacks' fastai integration."
import sys, math, tempfile, weakref
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from fastai.learner import Learner, load_learner, AvgMetric
from fastai.losses import CrossEntropyLossFlat
from fastai.metrics import accuracy
from fastai.callback.core import Callback, CancelFitException
from fastai.callback.schedule import combined_cos
from fastai.data.core import DataLoaders
from fastai.data.load import DataLoader
from fastai.torch_core import set_seed
from openmixup_nb.automix import (cosine_momentum, ema_update_, frozen_copy, automix_pair, EMAMetric,
                                  LearnableMixCallback, AutoMixCallback, SAMixCallback)
from openmixup_nb.callback import synth_dls, MixedLoss, MixCallback, _ListDS
from openmixup_nb.models import create_model

FAST = settings(max_examples=40, deadline=None)

from _helpers import gen, _seed, _one_thread # autouse fixtures: seed 0 per test, one thread per module

class Gen(nn.Module):
    "A deterministic stand-in for the MixBlock whose mask depends on feat, λ and the partner index"
    def __init__(self, c):
        super().__init__()
        self.conv = nn.Conv2d(2 * c, 1, 1)
    def forward(self, feat, lam, index, size):
        z = self.conv(torch.cat([feat, feat[index]], 1)) + 3 * (lam - 0.5)
        return torch.sigmoid(F.interpolate(z, size=size, mode='nearest'))

class Fixed(nn.Module):
    "A generator returning a given mask, whatever its inputs"
    def __init__(self, mask): super().__init__(); self.mask = mask
    def forward(self, feat, lam, index, size): return self.mask

def blend(x, m, idx): return m * x + (1 - m) * x[idx]

# ---------------------------------------------------------------------------------------------- automix_pair
@st.composite
def pairs(draw):
    n, c, H, W = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(2, 9)), draw(st.integers(2, 9))
    g = gen(draw(st.integers(0, 2**31 - 1)))
    x, feat = torch.randn(n, c, H, W, generator=g), torch.randn(n, 4, 2, 2, generator=g)
    y = torch.randint(0, 3, (n,), generator=g) if draw(st.booleans()) else torch.rand(n, 3, generator=g).softmax(1)
    lam_mb, lam_bb = draw(st.floats(0, 1)), draw(st.floats(0, 1))
    margin = draw(st.sampled_from([0., 0.08, draw(st.floats(0, 0.49))]))
    if draw(st.booleans()): lam_bb = draw(st.sampled_from([margin, 1 - margin, 0., 1.]))
    return x, y, feat, lam_mb, lam_bb, torch.randperm(n, generator=g), torch.randperm(n, generator=g), margin

@FAST
@given(case=pairs(), adjust=st.booleans())
def test_automix_pair_mixes_with_the_masks(case, adjust):
    x, y, feat, lam_mb, lam_bb, i_mb, i_bb, margin = case
    g = Gen(4)
    bb, mb = automix_pair(x, y, feat, g, lam_mb, lam_bb, i_mb, i_bb, margin, adjust)
    # the classifier's batch: no gradient at all, mixed with its own (broadcast) mask
    assert bb.x.grad_fn is None and not bb.x.requires_grad and not bb.mask.requires_grad
    assert bb.x.shape == x.shape and bb.x.dtype == x.dtype
    assert torch.allclose(bb.x, blend(x, bb.mask, i_bb), atol=1e-5)
    # the generator's batch: mask in the graph, generated for (λ_mb, idx_mb)
    assert mb.mask.requires_grad and mb.x.grad_fn is not None
    assert torch.allclose(mb.mask, g(feat, lam_mb, i_mb, x.shape[-2:]), atol=1e-6)
    assert torch.allclose(mb.x, blend(x, mb.mask, i_mb), atol=1e-5)
    # labels: the sampled λ of each branch (not the realised mask mean), partners' labels
    for r, lam, idx in ((bb, lam_bb, i_bb), (mb, lam_mb, i_mb)):
        assert r.lam.shape == (len(x),) and torch.equal(r.lam, torch.full((len(x),), lam))
        assert torch.equal(r.y_a, y) and torch.equal(r.y_b, y[idx]) and torch.equal(r.index, idx)

@FAST
@given(case=pairs(), adjust=st.booleans())
def test_margin_gives_plain_mixup(case, adjust):
    x, y, feat, lam_mb, lam_bb, i_mb, i_bb, margin = case
    g = Gen(4)
    bb, _ = automix_pair(x, y, feat, g, lam_mb, lam_bb, i_mb, i_bb, margin, adjust)
    with torch.no_grad(): m = g(feat, lam_bb, i_bb, x.shape[-2:])
    if lam_bb <= margin or 1 - lam_bb <= margin: # exactly Mixup with λ_bb
        assert torch.allclose(bb.x, lam_bb * x + (1 - lam_bb) * x[i_bb], atol=1e-6)
        assert bb.mask.unique().tolist() == [pytest.approx(lam_bb)]
    elif not adjust: assert torch.allclose(bb.mask, m) # inside the margins: the generator's mask for (λ_bb, idx_bb)

@pytest.mark.parametrize('margin', [0.08, 0.05, 0.25])
def test_margin_boundary_lambda_equal_margin(margin):
    x, y, feat = torch.randn(4, 3, 6, 6), torch.arange(4), torch.randn(4, 4, 2, 2)
    i = torch.tensor([1, 2, 3, 0])
    for lam in (margin, 0.92) if margin == 0.08 else (margin,): # λ == 1 - margin in general: the test below
        bb, _ = automix_pair(x, y, feat, Gen(4), 0.5, lam, i, i, margin)
        assert torch.allclose(bb.x, lam * x + (1 - lam) * x[i], atol=1e-6), lam

def test_margin_boundary_one_minus_margin_all_margins():
    x, y, feat, i = torch.randn(2, 1, 3, 3), torch.arange(2), torch.randn(2, 4, 2, 2), torch.tensor([1, 0])
    missed = [m for m in (k / 100 + 0.003 for k in range(1, 49))
              if automix_pair(x, y, feat, Gen(4), 0.5, 1 - m, i, i, m)[0].mask.numel() != 1]
    assert not missed, missed[:5]

@st.composite
def raw_masks(draw):
    n, H, W = draw(st.integers(1, 4)), draw(st.integers(1, 7)), draw(st.integers(1, 7))
    g = gen(draw(st.integers(0, 2**31 - 1)))
    m = torch.rand(n, 1, H, W, generator=g) ** draw(st.sampled_from([0.2, 1., 5.])) # skewed means both ways
    kind = draw(st.sampled_from(['soft', 'binary', 'const']))
    if kind == 'binary': m = (m > 0.5).float()
    if kind == 'const': m = torch.full_like(m, draw(st.sampled_from([0., 1., 0.5])))
    return m

@FAST
@given(m=raw_masks(), lam=st.floats(0.1, 0.9), seed=st.integers(0, 1000))
def test_mask_adjust_means_are_lambda_bb(m, lam, seed):
    n = len(m)
    x, y, feat = torch.randn(n, 2, *m.shape[-2:]), torch.arange(n), torch.randn(n, 4, 1, 1)
    i = torch.randperm(n, generator=gen(seed))
    lam_mb = 1 - lam # a different λ for the generator's branch: the classifier's masks must use λ_bb
    bb, _ = automix_pair(x, y, feat, Fixed(m), lam_mb, lam, i, i, lam_margin=0.05, adjust=True)
    assert ((bb.mask >= 0) & (bb.mask <= 1)).all()
    assert torch.allclose(bb.mask.mean((1, 2, 3)), torch.full((n,), lam), atol=1e-5), bb.mask.mean((1, 2, 3))
    assert torch.allclose(bb.x, blend(x, bb.mask, i), atol=1e-5)
    # samples already at mean λ keep their mask
    same = (m.mean((1, 2, 3)) - lam).abs() < 1e-7
    assert torch.allclose(bb.mask[same], m[same], atol=1e-6) # (up to the 1e-8 clamp)

# ---------------------------------------------------------------------------------------------- EMA
def small_net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 2))

@FAST
@given(m=st.floats(0, 1, exclude_max=True), seed=st.integers(0, 1000))
def test_ema_update_formula(m, seed):
    torch.manual_seed(seed)
    q = small_net()
    e = frozen_copy(q)
    for p in q.parameters(): p.data.add_(torch.randn_like(p))
    q(torch.randn(2, 3, 6, 6)) # changes q's BN buffers: the EMA's must not follow
    e0, q0 = [p.clone() for p in e.parameters()], [p.clone() for p in q.parameters()]
    b0 = [b.clone() for b in e.buffers()]
    ema_update_(e, q, m)
    for a, a0, b in zip(e.parameters(), e0, q0): assert torch.allclose(a, m * a0 + (1 - m) * b, atol=1e-6, rtol=1e-5)
    assert all(torch.equal(b, b1) for b, b1 in zip(e.buffers(), b0)) # buffers untouched
    assert all(torch.equal(a, b) for a, b in zip(q.parameters(), q0)) # the model untouched
    assert not any(p.requires_grad for p in e.parameters())

@given(m=st.floats(1, 10))
@settings(max_examples=10, deadline=None)
def test_ema_update_momentum_ge_1_is_noop(m):
    q = small_net(); e = frozen_copy(q)
    for p in q.parameters(): p.data.add_(1.)
    s0 = {k: v.clone() for k, v in e.state_dict().items()}
    ema_update_(e, q, m)
    assert all(torch.equal(v, s0[k]) for k, v in e.state_dict().items())

def test_ema_update_mismatch_raises():
    with pytest.raises(ValueError, match='copy of the model'): ema_update_(small_net(), nn.Linear(2, 2), 0.9)

def test_frozen_copy_drops_hooks_and_grads():
    q = small_net(); calls = []
    q[0].register_forward_hook(lambda *a: calls.append(1))
    q(torch.randn(1, 3, 6, 6)).sum().backward()
    e = frozen_copy(q); e(torch.randn(1, 3, 6, 6))
    assert len(calls) == 1 and all(p.grad is None and not p.requires_grad for p in e.parameters())
    assert all(p.requires_grad for p in q.parameters())

@FAST
@given(base=st.floats(0.5, 0.9999), gap=st.floats(0, 0.0999), warmup=st.floats(0, 1))
def test_cosine_momentum(base, gap, warmup):
    end = base + gap
    assert cosine_momentum(0., base, end, warmup) == pytest.approx(base)
    assert cosine_momentum(1., base, end, warmup) == pytest.approx(end, abs=1e-12)
    ps = [k / 50 for k in range(51)]
    ms = [cosine_momentum(p, base, end, warmup) for p in ps]
    assert all(a <= b + 1e-15 for a, b in zip(ms, ms[1:])) # monotone
    for p, v in zip(ps, ms):
        if p < warmup: assert v == base # held at base during the warm-up
        else: assert v == pytest.approx(end - (end - base) * (math.cos(math.pi * p) + 1) / 2, abs=1e-12)

def test_cosine_momentum_warmup_boundary():
    assert cosine_momentum(0.0999, 0.9, 0.99, 0.1) == 0.9
    assert cosine_momentum(0.1, 0.9, 0.99, 0.1) == pytest.approx(0.99 - 0.09 * (math.cos(0.1 * math.pi) + 1) / 2)
    assert cosine_momentum(0.5, 0.9, 0.99, 0.1) == pytest.approx(0.945)

# ---------------------------------------------------------------------------------------------- the callbacks
def learner(cb, n=32, bs=8, shape=(3, 16, 16), metrics=accuracy, loss_func=None, dls=None, seed=0, **kw):
    torch.manual_seed(seed)
    dls = dls or synth_dls(n=n, shape=shape, bs=bs)
    return Learner(dls, create_model('resnet18', num_classes=3, width=0.125), loss_func=loss_func or CrossEntropyLossFlat(),
                   metrics=metrics, cbs=cb, **kw)

def quiet_fit(learn, *args, meth='fit', **kw):
    with learn.no_bar(), learn.no_logging(): getattr(learn, meth)(*args, **kw)

CBS = [AutoMixCallback, SAMixCallback]

@pytest.mark.parametrize('cls', CBS)
def test_group_exists_before_fit_and_one_cycle_works(cls):
    cb = cls(); learn = learner(cb)
    learn.create_opt()
    assert len(learn.opt.param_lists) == 2
    assert {id(p) for p in learn.opt.param_lists[1]} == {id(p) for p in cb.mixblock.parameters()}
    ema_ids = {id(p) for p in cb.ema.parameters()}
    assert not any(id(p) in ema_ids for pl in learn.opt.param_lists for p in pl)
    quiet_fit(learn, 1, 1e-3, meth='fit_one_cycle')
    assert cb.n_steps == 4 and len(learn.opt.param_lists) == 2
    assert all(p.grad is None and not p.requires_grad for p in cb.ema.parameters()) # the EMA never gets gradients
    assert all(torch.isfinite(v) and v.grad_fn is None for v in cb.loss_parts.values())
    assert sorted(cb.loss_parts) == ['gen', 'mask', 'mix', 'one']

class Watch(Callback):
    "Records, at every optimizer step (what the step uses), pct_train and each group's lr and mom"
    order = 99
    def __init__(self): self.seen = []
    def before_step(self): self.seen.append((self.pct_train, [dict(h) for h in self.opt.hypers]))

def test_generator_lr_schedule_every_step():
    cb, w = AutoMixCallback(mixblock_lr=0.05, mixblock_lr_end=0.005), Watch()
    learn = learner([cb, w])
    quiet_fit(learn, 2, 1e-2, meth='fit_one_cycle')
    assert len(w.seen) == 8
    one_cycle = combined_cos(0.25, 1e-2 / 25, 1e-2, 1e-2 / 1e5)
    for pct, hs in w.seen:
        assert hs[1]['lr'] == pytest.approx(0.005 + 0.045 * (math.cos(math.pi * pct) + 1) / 2, rel=1e-9)
        assert hs[0]['lr'] == pytest.approx(float(one_cycle(pct)), rel=1e-6) # the model keeps fastai's schedule
    # constant generator lr; the learner's fit(lr) does not override it
    cb, w = AutoMixCallback(mixblock_lr=0.3), Watch(); learn = learner([cb, w])
    quiet_fit(learn, 1, 1e-3)
    assert all(hs[1]['lr'] == 0.3 and hs[0]['lr'] == 1e-3 for _, hs in w.seen)

def test_ema_follows_the_momentum_schedule():
    "At every step the EMA moves by the scheduled momentum: θ_k ← m·θ_k + (1-m)·θ_q with m = cosine_momentum(pct_train)"
    class Before(Callback):
        order = LearnableMixCallback.order - 0.5
        def after_step(self):
            self.k = [[p.detach().clone() for p in ps] for ps in (cb.ema.parameters(), self.model.parameters())]
            self.pct = self.pct_train
    class After(Callback):
        order = LearnableMixCallback.order + 0.5
        def __init__(self): self.ms = []
        def after_step(self):
            m = cosine_momentum(b.pct, 0.5, 0.95, 0.3); k0, q = b.k
            for a, a0, c in zip(cb.ema.parameters(), k0, q): assert torch.allclose(a, m * a0 + (1 - m) * c, atol=1e-6)
            self.ms.append(m)
    cb, b, a = AutoMixCallback(momentum=0.5, momentum_end=0.95, momentum_warmup=0.3), Before(), After()
    learn = learner([cb, b, a])
    quiet_fit(learn, 2, 1e-2)
    assert len(a.ms) == 8 and a.ms[0] == 0.5 and a.ms[-1] > 0.9 and cb.n_steps == 8

def test_recorder_lrs_follow_the_model():
    learn = learner(AutoMixCallback(mixblock_lr=0.05))
    quiet_fit(learn, 1, 1e-2, meth='fit_one_cycle')
    assert len(set(learn.recorder.lrs)) > 1 and 0.05 not in learn.recorder.lrs

def test_train_metrics_leave_the_ema_alone():
    bufs = []
    for tm in (False, True):
        cb = AutoMixCallback(); learn = learner(cb)
        learn.recorder.train_metrics = tm
        set_seed(3); learn.dls.train.rng.seed(3); quiet_fit(learn, 1, 1e-3)
        bufs.append([b.clone() for b in cb.ema.buffers()])
    assert all(torch.equal(a, b) for a, b in zip(*bufs))

def test_mix_hypers_applied_with_fit():
    cb, w = AutoMixCallback(mix_hypers={'mom': 0., 'wd': 0.5}), Watch(); learn = learner([cb, w])
    quiet_fit(learn, 1, 1e-3)
    assert all(hs[1]['mom'] == 0. and hs[1]['wd'] == 0.5 and hs[0]['mom'] != 0 and hs[0]['wd'] != 0.5 for _, hs in w.seen)

def test_mix_hypers_survive_fit_one_cycle():
    cb, w = AutoMixCallback(mixblock_lr=0.03, mix_hypers={'mom': 0.}), Watch(); learn = learner([cb, w])
    quiet_fit(learn, 1, 1e-3, meth='fit_one_cycle')
    assert all(hs[1]['mom'] == 0. for _, hs in w.seen), [hs[1]['mom'] for _, hs in w.seen]

def ce_metric(inp, targ): return F.cross_entropy(inp.float(), targ)

def hand_metrics(model, dl):
    model.eval(); ps, ys = [], []
    with torch.no_grad():
        for x, y in dl: ps.append(model(x)); ys.append(y)
    p, y = torch.cat(ps), torch.cat(ys)
    return float((p.argmax(1) == y).float().mean()), float(F.cross_entropy(p, y))

@pytest.mark.parametrize('cls', CBS)
def test_ema_metrics_are_the_ema_models(cls):
    cb = cls(momentum=0.5, momentum_end=0.5) # an EMA far from the model, so the two metrics differ
    learn = learner(cb, metrics=[accuracy, AvgMetric(ce_metric)], n=48)
    quiet_fit(learn, 2, 3e-2)
    names = learn.recorder.metric_names[1:-1]
    assert names == ['train_loss', 'valid_loss', 'accuracy', 'ce_metric', 'ema_accuracy', 'ema_ce_metric']
    vals = dict(zip(names, learn.recorder.values[-1]))
    acc, ce = hand_metrics(cb.ema, learn.dls.valid)
    assert vals['ema_accuracy'] == pytest.approx(acc, abs=1e-6) and vals['ema_ce_metric'] == pytest.approx(ce, rel=1e-5)
    macc, mce = hand_metrics(learn.model, learn.dls.valid)
    assert vals['accuracy'] == pytest.approx(macc, abs=1e-6) and vals['ce_metric'] == pytest.approx(mce, rel=1e-5)
    assert abs(ce - mce) > 1e-4 # the check above can tell the two models apart
    assert [m.name for m in learn.metrics] == ['accuracy', 'ce_metric'] # the EMA metrics live only during a fit

def test_no_metrics_and_ema_metrics_off():
    learn = learner(AutoMixCallback(), metrics=[])
    quiet_fit(learn, 1, 1e-3)
    assert learn.recorder.metric_names[1:-1] == ['train_loss', 'valid_loss']
    learn = learner(AutoMixCallback(ema_metrics=False))
    quiet_fit(learn, 1, 1e-3)
    assert learn.recorder.metric_names[1:-1] == ['train_loss', 'valid_loss', 'accuracy']

@pytest.mark.parametrize('ema_train', [True, False])
def test_ema_modes(ema_train):
    cb = SAMixCallback(ema_train=ema_train); learn = learner(cb)
    learn.create_opt()
    seen = []
    cb.ema.register_forward_pre_hook(lambda m, a: seen.append((learn.training, m.training, cb.mixblock.training)))
    quiet_fit(learn, 1, 1e-3)
    train, valid = [s[1:] for s in seen if s[0]], [s[1:] for s in seen if not s[0]]
    assert len(train) == 8 and len(valid) == 1 # feature + generator forwards per step, one metric forward per batch
    assert set(train) == {(ema_train, True)} and set(valid) == {(False, False)}

def test_loss_func_restored_after_fit_and_cancel():
    lf = CrossEntropyLossFlat(); cb = AutoMixCallback(); learn = learner(cb, loss_func=lf)
    quiet_fit(learn, 1, 1e-3)
    assert learn.loss_func is lf
    class Cancel(Callback):
        def after_batch(self):
            if self.training and self.iter == 1: raise CancelFitException()
    quiet_fit(learn, 1, 1e-3, cbs=Cancel())
    assert learn.loss_func is lf and [m.name for m in learn.metrics] == ['accuracy']
    assert cb.res is None
    quiet_fit(learn, 1, 1e-3)
    assert learn.recorder.metric_names[1:-1] == ['train_loss', 'valid_loss', 'accuracy', 'ema_accuracy']

class Boom(Callback):
    def after_loss(self):
        if self.training: raise RuntimeError('boom')

def test_real_error_then_fit_again_restores_loss():
    lf = CrossEntropyLossFlat(); cb = AutoMixCallback(); learn = learner(cb, loss_func=lf)
    with pytest.raises(RuntimeError, match='boom'): quiet_fit(learn, 1, 1e-3, cbs=Boom())
    # fastai calls no callback event after a real error: the wrapper only passes through outside training ...
    assert isinstance(learn.loss_func, MixedLoss) and learn.loss_func.loss_func is lf
    quiet_fit(learn, 1, 1e-3) # ... and the next fit unwraps it
    assert learn.loss_func is lf and cb.n_steps == 4

def test_real_error_then_fit_again_metric_names():
    learn = learner(AutoMixCallback())
    with pytest.raises(RuntimeError): quiet_fit(learn, 1, 1e-3, cbs=Boom())
    quiet_fit(learn, 1, 1e-3)
    assert learn.recorder.metric_names[1:-1] == ['train_loss', 'valid_loss', 'accuracy', 'ema_accuracy']

def one_step(cb, x, y):
    "A training batch through the callback by hand; returns the model's prediction on the mixed batch"
    learn = cb.learn
    learn.training = True
    cb('before_train')
    learn.xb, learn.yb = (x,), (y,)
    cb('before_batch')
    return learn.model(*learn.xb)

def step_grads(cls, split, x, y):
    cb = cls(split_backward=split); learn = learner(cb, seed=1)
    learn.create_opt(); learn.opt.zero_grad(); cb('before_fit')
    torch.manual_seed(2)
    pred = one_step(cb, x, y)
    loss = learn.loss_func(pred, y)
    loss.backward()
    parts = {k: float(v) for k, v in cb.loss_parts.items()}
    ps = list(learn.model.parameters()) + list(cb.mixblock.parameters())
    assert all(p.grad is None for p in cb.ema.parameters())
    cb('after_batch'); cb('after_train')
    return [p.grad.clone() for p in ps], parts, float(loss.detach())

@pytest.mark.parametrize('cls', CBS)
def test_split_backward_same_gradients(cls):
    x, y = torch.randn(6, 3, 16, 16), torch.tensor([0, 1, 2, 0, 1, 2])
    (ga, pa, la), (gb, pb, lb) = step_grads(cls, True, x, y), step_grads(cls, False, x, y)
    assert pa == pytest.approx(pb, rel=1e-5) and la == pytest.approx(lb, rel=1e-5)
    assert la == pytest.approx(sum(pa.values()), rel=1e-5) # the reported loss is the sum of every term
    for a, b in zip(ga, gb): assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)

def reaches(loss, ps):
    gs = torch.autograd.grad(loss, ps, retain_graph=True, allow_unused=True)
    return any(g is not None and g.abs().sum() > 0 for g in gs)

@pytest.mark.parametrize('cls', CBS)
def test_gradient_isolation(cls):
    cb = cls(split_backward=False); learn = learner(cb)
    learn.create_opt(); cb('before_fit')
    x, y = learn.dls.one_batch()
    pred = one_step(cb, x, y)
    parts = {'mix': cb.res.loss(pred, cb.old_lf), **cb.branch_losses(pred, y)}
    assert sorted(parts) == ['gen', 'mask', 'mix', 'one']
    model_ps, gen_ps = list(learn.model.parameters()), list(cb.mixblock.parameters())
    assert not any(p.requires_grad for p in cb.ema.parameters())
    for k in ('mix', 'one'): assert reaches(parts[k], model_ps) and not reaches(parts[k], gen_ps), k
    for k in ('gen', 'mask'): assert not reaches(parts[k], model_ps), k
    # the mask loss is zero inside its margin; the generator's mixed loss always reaches the MixBlock
    assert reaches(parts['gen'], gen_ps)
    assert cb.res.x.grad_fn is None
    cb('after_batch'); cb('after_train')

@pytest.mark.parametrize('split', [True, False])
def test_no_graph_kept_across_batches(split):
    refs = []
    class Keep(Callback):
        order = 99
        def after_loss(self):
            if not self.training: return
            cb = self.learn.auto_mix
            refs.append((weakref.ref(cb._mb.mask), weakref.ref(cb._parts['gen'])))
    cb = AutoMixCallback(split_backward=split); learn = learner([cb, Keep()])
    quiet_fit(learn, 1, 1e-3)
    assert len(refs) == 4
    assert all(r() is None for pair in refs for r in pair) # nothing of a batch's graph outlives the fit
    assert cb.res is None and cb._mb is None and cb._parts is None
    assert cb._ema_pred is None or cb._ema_pred.grad_fn is None # the last validation batch's EMA preds stay (no graph)

def test_no_graph_kept_after_cancelled_fit():
    refs = []
    class CancelAfterLoss(Callback):
        def after_loss(self):
            if self.training:
                refs.append(weakref.ref(self.learn.auto_mix._mb.mask)); raise CancelFitException()
    cb = AutoMixCallback(split_backward=False); learn = learner(cb)
    quiet_fit(learn, 1, 1e-3, cbs=CancelAfterLoss())
    learn.loss = learn.loss_grad = learn.pred = None # fastai's own references to the batch
    assert refs[0]() is None and cb._parts is None and cb._mb is None

def snapshot(learn, cb):
    return [v.clone() for v in learn.model.state_dict().values()] + [v.clone() for v in cb.mix_modules.state_dict().values()]

@pytest.mark.parametrize('cls', CBS)
def test_save_load_bit_for_bit(cls, tmp_path):
    dls = synth_dls(n=32, shape=(3, 16, 16), bs=8)
    learn = learner(cls(), dls=dls); learn.path = tmp_path
    quiet_fit(learn, 1, 1e-2)
    learn.save('m')
    assert sorted(p.name for p in (tmp_path/'models').iterdir()) == ['m.mix.pth', 'm.pth']
    fresh = learner(cls(), dls=dls, seed=7); fresh.path = tmp_path
    fresh.load('m')
    cf = fresh.cbs.filter(lambda c: isinstance(c, cls))[0]
    cl = learn.cbs.filter(lambda c: isinstance(c, cls))[0]
    assert cf.n_steps == 4 and len(fresh.opt.param_lists) == 2
    assert all(torch.equal(a, b) for a, b in zip(snapshot(learn, cl), snapshot(fresh, cf)))
    out = []
    for l, c in ((learn, cl), (fresh, cf)):
        set_seed(5); l.dls.train.rng.seed(5) # the shared DataLoader's own shuffling RNG too
        quiet_fit(l, 1, 1e-2); out.append(snapshot(l, c))
    assert cl.n_steps == cf.n_steps == 8
    assert all(torch.equal(a, b) for a, b in zip(*out))

def test_remove_cb_then_export(tmp_path):
    cb = SAMixCallback(); learn = learner(cb); learn.path = tmp_path
    quiet_fit(learn, 1, 1e-3)
    learn.remove_cb(cb)
    assert len(learn.opt.param_lists) == 1 and not any(isinstance(c, MixCallback) for c in learn.cbs)
    learn.export(tmp_path/'e.pkl')
    inf = load_learner(tmp_path/'e.pkl')
    assert not any(isinstance(c, MixCallback) for c in inf.cbs) and not isinstance(inf.loss_func, MixedLoss)
    x = learn.dls.valid.one_batch()[0]
    learn.model.eval(); inf.model.eval()
    with torch.no_grad(): assert torch.allclose(inf.model(x), learn.model(x))
    quiet_fit(learn, 1, 1e-3) # the learner trains on without the callback
    assert learn.recorder.metric_names[1:-1] == ['train_loss', 'valid_loss', 'accuracy']

def test_callback_through_fit_cbs():
    "Passed to `fit(cbs=...)` the callback works for that fit and leaves with its optimizer group (and its EMA)"
    lf = CrossEntropyLossFlat(); learn = learner([], loss_func=lf)
    cb = AutoMixCallback()
    quiet_fit(learn, 1, 1e-3, cbs=cb) # fresh learner: the optimizer is created with the callback present
    assert cb.n_steps == 4 and learn.recorder.metric_names[1:-1] == ['train_loss', 'valid_loss', 'accuracy', 'ema_accuracy']
    assert len(learn.opt.param_lists) == 1 and learn.loss_func is lf and cb not in learn.cbs
    cb2 = SAMixCallback()
    quiet_fit(learn, 1, 1e-3, cbs=cb2) # existing optimizer: the group is added at before_fit, removed after
    assert cb2.n_steps == 4 and len(learn.opt.param_lists) == 1
    with pytest.raises(ValueError, match=r'Learner\(cbs=\.\.\.\)'): quiet_fit(learn, 1, 1e-3, cbs=AutoMixCallback(), meth='fit_one_cycle')
    assert len(learn.opt.param_lists) == 1 and learn.loss_func is lf and [m.name for m in learn.metrics] == ['accuracy']

def test_validate_before_fit():
    learn = learner(AutoMixCallback())
    with learn.no_bar(): learn.validate()

def test_momentum_one_freezes_ema():
    cb = AutoMixCallback(momentum=1.); learn = learner(cb)
    learn.create_opt()
    e0 = [p.clone() for p in cb.ema.parameters()]
    quiet_fit(learn, 2, 1e-2)
    assert all(torch.equal(a, b) for a, b in zip(e0, cb.ema.parameters()))

@pytest.mark.parametrize('cls', CBS)
def test_float_labels_with_torch_ce(cls):
    g = gen(0)
    y = torch.randint(0, 3, (32,), generator=g)
    x = torch.randn(32, 3, 16, 16, generator=g) + y.float().view(-1, 1, 1, 1)
    soft = (0.8 * F.one_hot(y, 3).float() + 0.2 * torch.rand(32, 3, generator=g).softmax(1))
    for t in (F.one_hot(y, 3).float(), soft):
        ds = _ListDS(zip(x, t))
        dls = DataLoaders(DataLoader(ds, bs=8, shuffle=True, drop_last=True), DataLoader(_ListDS(list(ds)[:8]), bs=8))
        cb = cls(); learn = learner(cb, dls=dls, loss_func=nn.CrossEntropyLoss(), metrics=[])
        quiet_fit(learn, 1, 1e-3)
        assert cb.n_steps == 4 and all(torch.isfinite(v) for v in cb.loss_parts.values())
    # fastai's flattened CE takes class indices: a clear error, not a silent wrong loss
    with pytest.raises(ValueError, match='class indices'):
        quiet_fit(learner(cls(), dls=dls, metrics=[]), 1, 1e-3)

def test_soft_label_loss_value():
    "With float targets the classifier's mixed loss is soft CE against λ_bb·y + (1-λ_bb)·y[idx]"
    cb = AutoMixCallback(split_backward=False); learn = learner(cb, loss_func=nn.CrossEntropyLoss())
    learn.create_opt(); cb('before_fit')
    x, y = torch.randn(6, 3, 16, 16), torch.rand(6, 3).softmax(1)
    pred = one_step(cb, x, y)
    r = cb.res
    t = r.lam[:, None] * y + (1 - r.lam[:, None]) * y[r.index]
    assert torch.allclose(r.loss(pred, cb.old_lf), -(t * pred.log_softmax(1)).sum(1).mean(), atol=1e-6)
    cb('after_batch'); cb('after_train')

@pytest.mark.parametrize('cls', CBS)
@pytest.mark.parametrize('weights', [(1., 1., 1.), (0.5, 2., 0.3), (1., 0., 0.)])
def test_branch_loss_values(cls, weights):
    "Each term by hand: w_mix·mixed CE of the model on x_bb, w_one·CE on clean x, w_gen·mixed CE of the EMA on x_mb, mask loss"
    from openmixup_nb.mixblock import mask_loss
    cb = cls(weights=weights, split_backward=False); learn = learner(cb)
    learn.create_opt(); cb('before_fit')
    x, y = learn.dls.one_batch()
    pred = one_step(cb, x, y)
    loss = learn.loss_func(pred, y)
    r, mb, lf = cb.res, cb._mb, cb.old_lf
    w_mix, w_one, w_gen = weights
    def mixed_ce(p, res): return (res.lam * F.cross_entropy(p, res.y_a, reduction='none') + (1 - res.lam) * F.cross_entropy(p, res.y_b, reduction='none')).mean()
    want = {'mix': w_mix * mixed_ce(pred, r)}
    with torch.no_grad():
        if w_one: want['one'] = w_one * F.cross_entropy(learn.model(x), y)
        if w_gen:
            want['gen'] = w_gen * mixed_ce(cb.ema(mb.x), mb)
            want['mask'] = 0.1 * mask_loss(mb.mask, float(mb.lam[0]), cb.mask_loss_mode, 0.1)
    assert sorted(cb.loss_parts) == sorted(want)
    for k, v in want.items(): assert float(cb.loss_parts[k]) == pytest.approx(float(v), rel=1e-5, abs=1e-7), k
    assert float(loss) == pytest.approx(sum(float(v) for v in want.values()), rel=1e-5)
    cb('after_batch'); cb('after_train')

@pytest.mark.parametrize('kw, name', [
    (dict(alpha=0.), 'alpha'), (dict(alpha=-1.), 'alpha'), (dict(momentum=1.5), 'momentum'),
    (dict(momentum_end=-0.1), 'momentum_end'), (dict(momentum_warmup=2.), 'momentum_warmup'),
    (dict(mixblock='x'), 'mixblock'), (dict(config='cifar10'), 'config'), (dict(lam_margin=0.5), 'lam_margin'),
    (dict(lam_margin=-0.1), 'lam_margin'), (dict(mask_adjust=1.5), 'mask_adjust'), (dict(mask_loss=-1.), 'mask_loss'),
    (dict(mask_margin=-1.), 'mask_margin'), (dict(mask_loss_mode='l3'), 'mask_loss_mode'), (dict(weights=(1., 1.)), 'weights'),
    (dict(weights=(1., -1., 1.)), 'weights'), (dict(generator=3), 'generator')])
@pytest.mark.parametrize('cls', CBS)
def test_bad_arguments(cls, kw, name):
    with pytest.raises(ValueError, match=name): cls(**kw)
