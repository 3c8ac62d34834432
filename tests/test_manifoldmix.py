"Property tests of ManifoldMix and PatchUp: layer 0 is Mixup, hooks mix in the graph exactly once, PatchUp's masks and λ."
import sys
from functools import partial
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.mixup import mixup
from openmixup_nb.models import create_model
from openmixup_nb.callback import MixedLoss, synth_dls
from openmixup_nb.manifoldmix import (layer_modules, manifoldmix, patchup_holes, patchup, feature_mix_forward,
                                      manifoldmix_forward, patchup_forward, FeatureMixCallback, ManifoldMixCallback,
                                      PatchUpCallback, _bernoulli_cpu)
from fastai.learner import Learner
from fastai.callback.core import Callback, CancelFitException
from fastai.losses import CrossEntropyLossFlat
import fastai.callback.progress  # noqa: F401  (`Learner.no_bar`)

FAST = settings(max_examples=25, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

from _helpers import _seed, _one_thread # autouse fixtures: seed 0 per test, one thread per module

from _helpers import gen, distinct
def n_hooks(m): return sum(len(s._forward_hooks) for s in m.modules())

_MODELS = {}
def model(name='resnet18', **kw):
    "A small model in eval mode (cached; fresh gradients)"
    key = (name, tuple(sorted(kw.items())))
    if key not in _MODELS:
        torch.manual_seed(0)
        _MODELS[key] = create_model(name, **({'width': 0.125} if not name.startswith('timm:') else {}), **kw).eval()
    m = _MODELS[key]; m.zero_grad(set_to_none=True)
    return m


def manual_forward(m, x, layer, mix):
    "Our CIFAR net or timm's ResNet run by hand, `mix` applied to the activation at `layer`"
    if hasattr(m, 'stages'): # ours
        h = mix(x) if layer == 0 else x
        h = m.stem(h)
        if layer == 'stem': h = mix(h)
        for i, s in enumerate(m.stages):
            h = s(h)
            if layer == i + 1: h = mix(h)
        return m.forward_head(m.norm(h))
    h = mix(x) if layer == 0 else x # timm ResNet
    h = m.act1(m.bn1(m.conv1(h)))
    if layer == 'stem': h = mix(h)
    h = m.maxpool(h)
    for i, s in enumerate((m.layer1, m.layer2, m.layer3, m.layer4)):
        h = s(h)
        if layer == i + 1: h = mix(h)
    return m.forward_head(h)

# ---------------------------------------------------------------------------------------------- layers
def test_layer_modules_ours_and_timm():
    m = model()
    mods = layer_modules(m, (0, 'stem', 1, 4))
    assert mods[0] is None and mods['stem'] is m.stem and mods[1] is m.stages[0] and mods[4] is m.stages[3]
    r = model('timm:resnet18')
    assert layer_modules(r, ('stem',))['stem'] is r.act1 and layer_modules(r, (2,))[2] is r.layer2
    c = model('timm:convnext_atto')
    assert layer_modules(c, ('stem', 1))['stem'] is c.stem

@pytest.mark.parametrize('layers, msg', [((0, 5), 'layer 5 does not exist'), ((-1,), 'layers must'), ((), 'layers must'),
                                         (('top',), 'layers must'), ((True,), 'layers must'), ((1.5,), 'layers must')])
def test_layer_modules_bad(layers, msg):
    with pytest.raises(ValueError, match=msg): layer_modules(model(), layers)

def test_wrn_has_three_stages():
    with pytest.raises(ValueError, match='3 stages'): layer_modules(model('wrn28_8'), (4,))

# ---------------------------------------------------------------------------------------------- ManifoldMix
@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 6), lam_mode=st.sampled_from(['batch', 'sample']),
       pairing=st.sampled_from(['perm', 'flip', 'derangement']), drawn=st.booleans())
def test_layer0_is_mixup_exactly(seed, n, lam_mode, pairing, drawn):
    m = model()
    x, y = torch.randn(n, 3, 8, 8, generator=gen(seed)), torch.randint(0, 10, (n,), generator=gen(seed))
    kw = dict(layers=(0,)) if drawn else dict(layer=0)
    pred, res = manifoldmix_forward(m, x, y, lam_mode=lam_mode, pairing=pairing, generator=gen(seed), **kw)
    ref = mixup(x, y, 2., lam_mode=lam_mode, pairing=pairing, generator=gen(seed))
    for a, b in [(res.x, ref.x), (res.lam, ref.lam), (res.index, ref.index), (res.y_b, ref.y_b)]: assert torch.equal(a, b)
    with torch.no_grad(): assert torch.equal(pred, m(ref.x))
    assert res.extra['layer'] == 0

@pytest.mark.parametrize('name, layers', [('resnet18', ('stem', 1, 2, 3, 4)), ('preact_resnet18', (1, 3)),
                                          ('wrn28_8', (2, 3)), ('timm:resnet18', ('stem', 1, 4))])
@pytest.mark.parametrize('lam_mode', ['batch', 'sample'])
def test_hidden_layer_equals_manual_two_pass(name, layers, lam_mode):
    m = model(name)
    x, y = torch.randn(5, 3, 16, 16), torch.arange(5)
    for layer in layers:
        with torch.no_grad():
            pred, res = manifoldmix_forward(m, x, y, layer=layer, lam_mode=lam_mode, generator=gen(1))
            ref = manual_forward(m, x, layer, lambda h: mixup(h, y, 2., lam_mode=lam_mode, generator=gen(1)).x)
        assert torch.equal(pred, ref), (name, layer)
        assert res.extra['layer'] == layer and n_hooks(m) == 0
        # and the formula itself
        with torch.no_grad():
            formula = manual_forward(m, x, layer, lambda h: res.lam.view(-1, 1, 1, 1)*h + (1-res.lam.view(-1, 1, 1, 1))*h[res.index])
        torch.testing.assert_close(pred, formula, atol=1e-4, rtol=1e-4)

@pytest.mark.parametrize('fwd', [manifoldmix_forward, partial(patchup_forward, block_size=3, gamma=0.3),
                                 partial(patchup_forward, mode='soft', block_size=3)])
@pytest.mark.parametrize('layer', ['stem', 1, 2])
def test_gradients_flow_through_both_branches(fwd, layer):
    m = model()
    x = torch.randn(6, 3, 8, 8, requires_grad=True); y = torch.arange(6); idx = torch.arange(6).roll(1) # partner of 0 is 5
    pred, res = fwd(m, x, y, layer=layer, index=idx, generator=gen(0))
    pred[0].sum().backward()
    # eval mode: samples are independent except through the mix, so sample 0's output depends on inputs 0 and 5 only
    assert x.grad.flatten(1).abs().sum(1).nonzero().flatten().tolist() == [0, 5]
    g_hook = {k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None}
    m.zero_grad(set_to_none=True)
    mask = None if res.mask is None else res.mask.to(x.dtype)
    mix = (lambda h: res.lam[0]*h + (1-res.lam[0])*h[idx]) if mask is None else (lambda h: mask*h + (1-mask)*h[idx])
    manual_forward(m, x.detach(), layer, mix)[0].sum().backward()
    g_ref = {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
    assert g_hook.keys() == g_ref.keys() and any(k.startswith('stem') for k in g_hook)
    for k in g_ref: torch.testing.assert_close(g_hook[k], g_ref[k], atol=1e-5, rtol=1e-4)

def test_hook_removed_when_forward_fails():
    m = model()
    def bad(h, y, **kw): raise KeyError('boom')
    with pytest.raises(KeyError): feature_mix_forward(m, torch.randn(2, 3, 8, 8), torch.arange(2), bad, layer=2)
    assert n_hooks(m) == 0

def test_forward_mixes_once_per_call():
    m = model(); calls = []
    def counting(h, y, **kw): calls.append(h.shape); return manifoldmix(h, y, **kw)
    feature_mix_forward(m, torch.randn(2, 3, 8, 8), torch.arange(2), counting, layer=1)
    assert len(calls) == 1 and n_hooks(m) == 0

@pytest.mark.parametrize('fwd', [manifoldmix_forward, patchup_forward])
def test_autocast_bf16_fp16(fwd):
    m = model()
    x, y = torch.randn(3, 3, 8, 8), torch.arange(3)
    for dt in (torch.bfloat16, torch.float16):
        for layer in (0, 'stem', 2):
            with torch.autocast('cpu', dtype=dt): pred, res = fwd(m, x, y, layer=layer, generator=gen(0))
            assert torch.isfinite(pred).all() and (layer == 0 or res.x.dtype == dt)
            res.loss(pred.float(), CrossEntropyLossFlat()).backward()
            assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)

def test_batch_of_one():
    m = model()
    for fwd in (manifoldmix_forward, patchup_forward):
        for layer in (0, 'stem', 1, 4):
            pred, res = fwd(m, torch.randn(1, 3, 8, 8), torch.tensor([3]), layer=layer, generator=gen(0))
            assert pred.shape == (1, 10) and res.index.tolist() == [0] and torch.isfinite(pred).all()
            assert torch.equal(res.soft_target(10), F.one_hot(torch.tensor([3]), 10).float()) # mixed with itself

def test_timm_convnext_both_methods():
    m = model('timm:convnext_atto')
    x, y = torch.randn(2, 3, 32, 32), torch.arange(2)
    for layer in ('stem', 1, 2, 3, 4):
        pred, res = manifoldmix_forward(m, x, y, layer=layer, generator=gen(0))
        assert pred.shape == (2, 10) and res.extra['layer'] == layer
    pred, res = patchup_forward(m, x, y, layer=1, generator=gen(0))
    assert res.x.shape[-1] == 8 and res.extra['block_size'] == 7 and n_hooks(m) == 0

def test_layers_validated_before_forward():
    m = model()
    with pytest.raises(ValueError, match='layer 6'): manifoldmix_forward(m, torch.randn(2, 3, 8, 8), None, layers=(0, 6))
    with pytest.raises(ValueError, match='alpha'): manifoldmix_forward(m, torch.randn(2, 3, 8, 8), None, alpha=-1.)
    with pytest.raises(ValueError, match='gamma'): patchup_forward(m, torch.randn(2, 3, 8, 8), None, gamma=2.)
    m.output_fmt = 'NHWC'
    try:
        with pytest.raises(ValueError, match='NHWC'): patchup_forward(m, torch.randn(2, 3, 8, 8), None, layers=(0, 1))
        patchup_forward(m, torch.randn(2, 3, 8, 8), None, layers=(0,)) # the input is fine
    finally: del m.output_fmt

def test_layer_draws_uniform_and_seeded():
    m = model(); x = torch.randn(2, 3, 8, 8)
    seen = [manifoldmix_forward(m, x, None, layers=(0, 'stem', 2), generator=gen(s))[1].extra['layer'] for s in range(60)]
    assert set(seen) == {0, 'stem', 2} and min(seen.count(l) for l in set(seen)) > 8
    assert seen == [manifoldmix_forward(m, x, None, layers=(0, 'stem', 2), generator=gen(s))[1].extra['layer'] for s in range(60)]

# ---------------------------------------------------------------------------------------------- PatchUp masks
@st.composite
def fmaps(draw, min_n=1, max_n=5, dtypes=DTYPES):
    n, c = draw(st.integers(min_n, max_n)), draw(st.integers(1, 5))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    x = torch.randn(n, c, h, w, generator=gen(seed)).to(dtype)
    return x, torch.randint(0, 5, (n,), generator=gen(seed)), seed

@FAST
@given(b=fmaps(), lam_mode=st.sampled_from(['batch', 'sample']), gamma=st.floats(0, 1), block=st.integers(1, 9))
def test_hard_patchup_binary_and_lam_is_realised_share(b, lam_mode, gamma, block):
    x, y, seed = b
    x = distinct(x)
    res = patchup(x, y, lam_mode=lam_mode, gamma=gamma, block_size=block, pairing='derangement', generator=gen(seed))
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x).all()
    kept, swapped = res.x == x, res.x == x[res.index]
    assert (kept | swapped).all() # every feature is either the sample's or the partner's, never a blend
    assert set(res.mask.unique().tolist()) <= {0., 1.}
    assert res.mask.shape == ((len(x) if lam_mode == 'sample' else 1),) + x.shape[1:]
    own = res.mask.bool().expand_as(x)
    if len(x) > 1: assert torch.equal(kept, own) # derangement: partners differ everywhere
    torch.testing.assert_close(res.lam, own.float().mean((1, 2, 3)), atol=1e-6, rtol=0)
    if lam_mode == 'batch': assert (res.lam == res.lam[0]).all()

@FAST
@given(b=fmaps(), lam_mode=st.sampled_from(['batch', 'sample']), lam0=st.floats(0, 1))
def test_soft_patchup_holes_interpolated(b, lam_mode, lam0):
    x, y, seed = b
    res = patchup(x, y, lam=lam0, mode='soft', lam_mode=lam_mode, generator=gen(seed))
    vals = set(res.mask.unique().tolist())
    assert vals <= {1., float(torch.tensor(lam0).to(x.dtype))} # λ₀ as applied, in the features' dtype
    m = res.mask.to(torch.float64)
    ref = m*x.double() + (1 - m)*x.double()[res.index]
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-2, torch.bfloat16: 1e-1}[x.dtype]
    torch.testing.assert_close(res.x.double(), ref, atol=tol * (1 + x.abs().max().item()), rtol=0)
    torch.testing.assert_close(res.lam, res.mask.float().mean((1, 2, 3)).expand(len(x)), atol=1e-6, rtol=0)
    hard = patchup(x, y, mode='hard', lam_mode=lam_mode, gamma=0.75, generator=gen(seed), lam=lam0) # same draws: same holes
    if float(torch.tensor(lam0).to(x.dtype)) < 1: assert torch.equal(hard.mask == 1, res.mask == 1) # λ₀ rounded to 1: no holes left

@FAST
@given(b=fmaps(), mode=st.sampled_from(['hard', 'soft']), lam_mode=st.sampled_from(['batch', 'sample']))
def test_identity_partner_leaves_features_unchanged(b, mode, lam_mode):
    x, y, seed = b
    res = patchup(x, y, index=torch.arange(len(x)), mode=mode, lam_mode=lam_mode, generator=gen(seed))
    assert torch.equal(res.x, x)

@FAST
@given(b=fmaps(), mode=st.sampled_from(['hard', 'soft']), lam_mode=st.sampled_from(['batch', 'sample']))
def test_patchup_deterministic_and_input_untouched(b, mode, lam_mode):
    x, y, seed = b
    x0 = x.clone()
    r1, r2 = (patchup(x, y, mode=mode, lam_mode=lam_mode, generator=gen(seed)) for _ in range(2))
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.lam, r2.lam) and torch.equal(r1.index, r2.index)
    assert torch.equal(x, x0)
    r3 = patchup(x.clone(), y, mode=mode, lam_mode=lam_mode, generator=gen(seed), inplace=True)
    assert torch.equal(r3.x, r1.x)

def test_generator_leaves_global_rng_alone():
    torch.manual_seed(5); ref = torch.rand(3)
    torch.manual_seed(5); patchup(torch.randn(4, 3, 8, 8, generator=gen(0)), None, mode='soft', lam_mode='sample', generator=gen(1))
    assert torch.equal(torch.rand(3), ref)

@pytest.mark.parametrize('H, W, b, gamma', [(32, 32, 7, 0.5), (16, 24, 5, 0.75), (12, 12, 4, 0.3)])
def test_holes_share_matches_gamma_adj(H, W, b, gamma):
    "Away from the border a feature is in a hole unless none of the b² seeds covering it fired"
    holes = patchup_holes((4, H, W), gamma, b, n=400, generator=gen(0)).float()
    g_adj = gamma * H * W / (b**2 * (H - b + 1) * (W - b + 1))
    expected = 1 - (1 - g_adj) ** (b * b)
    inner = holes[..., b:H-b, b:W-b].mean().item()
    assert abs(inner - expected) < 0.02, (inner, expected)
    assert holes.shape == (400, 4, H, W)

@pytest.mark.parametrize('gamma', [0.1, 0.5, 0.9])
def test_hard_lam_is_the_share_outside_the_holes(gamma):
    "λ weights the first sample by what it keeps: 1 - the hole share (about 1 - γ on 32×32 maps with b = 7)"
    x = torch.randn(64, 2, 32, 32)
    lam = patchup(x, None, gamma=gamma, lam_mode='sample', generator=gen(0)).lam
    holes = patchup_holes((2, 32, 32), gamma, 7, n=64, generator=gen(1)).float().mean()
    assert abs(lam.mean().item() - (1 - holes.item())) < 0.03
    if gamma <= 0.5: assert abs(lam.mean().item() - (1 - gamma)) < 0.05 # overlaps matter more for large γ

def test_holes_are_whole_blocks():
    "One seed gives one b×b block, centred (one more row and column after the seed when b is even), cut at the border"
    for b in (3, 4, 7):
        for seed in range(30):
            holes = patchup_holes((1, 11, 13), gamma=0.02, block_size=b, generator=gen(seed))[0, 0]
            seeds_g = _bernoulli_cpu((1, 1, 11, 13), min(1., 0.02*11*13/(b*b*(11-b+1)*(13-b+1))), gen(seed))
            rows, cols = seeds_g[0, 0].nonzero(as_tuple=True)
            ref = torch.zeros(11, 13, dtype=torch.bool)
            for r, c in zip(rows.tolist(), cols.tolist()):
                ref[max(r - (b-1)//2, 0):r + b//2 + 1, max(c - (b-1)//2, 0):c + b//2 + 1] = True
            assert torch.equal(holes, ref), (b, seed)

@pytest.mark.parametrize('p', [1e-4, 0.01, 0.3, 0.9])
@pytest.mark.parametrize('margin', [6., 0.])
def test_bernoulli_from_geometric_gaps(p, margin):
    "The gap sampler is a Bernoulli(p) field: right share, no dependence on position, the same with or without refills"
    d = _bernoulli_cpu((200, 2000), p, gen(0), margin=margin).float()
    sd = (p * (1 - p) / d.numel()) ** 0.5
    assert abs(d.mean().item() - p) < 5 * sd
    halves = d.view(-1)[:d.numel()//2].mean().item(), d.view(-1)[d.numel()//2:].mean().item() # the end is not starved
    assert abs(halves[0] - halves[1]) < 10 * sd
    if p >= 0.01: # neighbours independent: P(both) = p²
        both = (d.view(-1)[1:] * d.view(-1)[:-1]).mean().item()
        assert abs(both - p * p) < 5 * (p * p * (1 - p * p) / d.numel()) ** 0.5 + 1e-6

def test_holes_batch_vs_sample():
    x = torch.randn(6, 3, 10, 10)
    assert patchup(x, None, generator=gen(0)).mask.shape[0] == 1
    m = patchup(x, None, lam_mode='sample', generator=gen(0)).mask
    assert m.shape[0] == 6 and len({tuple(r.flatten().tolist()) for r in m}) == 6

def test_hard_patchup_gradient_matches_where():
    "In the graph hard PatchUp must not use the bit-level select (no gradient): the gradient is torch.where's"
    x = torch.randn(4, 3, 8, 8, requires_grad=True); w = torch.randn(4, 3, 8, 8); idx = torch.tensor([2, 0, 3, 1])
    res = patchup(x * 1, None, index=idx, generator=gen(0))
    (res.x * w).sum().backward(); g = x.grad.clone(); x.grad = None
    keep = res.mask.bool()
    (torch.where(keep, x, x[idx]) * w).sum().backward()
    assert torch.equal(g, x.grad)

@pytest.mark.parametrize('kwargs, name', [(dict(mode='both'), 'mode'), (dict(gamma=-0.1), 'gamma'), (dict(gamma='0.5'), 'gamma'),
                                          (dict(block_size=0), 'block_size'), (dict(block_size=2.5), 'block_size'),
                                          (dict(alpha=0.), 'alpha'), (dict(lam=1.5), 'lam'), (dict(lam_mode='pixel'), 'lam_mode'),
                                          (dict(pairing='near'), 'pairing'), (dict(index=torch.arange(3)), 'index')])
def test_patchup_bad_args(kwargs, name):
    with pytest.raises(ValueError, match=name): patchup(torch.randn(4, 3, 8, 8), torch.arange(4), **kwargs)

def test_patchup_needs_nchw():
    with pytest.raises(ValueError, match=r'\(N, C, H, W\)'): patchup(torch.randn(4, 10, 8), None) # tokens
    with pytest.raises(ValueError, match='labels'): patchup(torch.randn(4, 3, 8, 8), torch.arange(3))

# ---------------------------------------------------------------------------------------------- callbacks
class Probe(Callback):
    "A second forward after each training forward; validation inputs and predictions kept"
    order = 60
    def before_validate(self): self.valid = [] # the last epoch's, made with the final weights
    def after_pred(self):
        if self.training: self.learn.model(self.x)
        else: self.valid.append((self.x.clone(), self.pred.detach().clone()))

class CancelAt(Callback):
    def __init__(self, it): self.it = it
    def after_batch(self):
        if self.iter == self.it: raise CancelFitException

def fit(cbs, arch='resnet18', n=48, size=16, epochs=1):
    torch.manual_seed(0)
    learn = Learner(synth_dls(n=n, shape=(3, size, size)), create_model(arch, num_classes=3, width=0.125),
                    loss_func=CrossEntropyLossFlat(), cbs=cbs)
    learn.no_bar(); learn.no_logging()
    learn.fit(epochs, 1e-2)
    return learn

@pytest.mark.parametrize('cb', [lambda: ManifoldMixCallback(layers=(1, 'stem', 3)), lambda: PatchUpCallback(layers=(1, 2), p=1.),
                                lambda: PatchUpCallback('soft', lam_mode='sample')])
def test_callback_mixes_once_per_training_batch_and_never_in_validation(cb):
    cb = cb(); fired = []
    mf = cb.mix_features
    cb.mix_features = lambda h, y, inplace=False: fired.append(cb.training) or mf(h, y, inplace)
    learn = fit([cb, Probe()], epochs=2)
    assert len(fired) == 2 * len(learn.dls.train) and all(fired)
    learn.model.eval()
    with torch.no_grad():
        for xv, pv in learn.probe.valid: assert torch.equal(learn.model(xv), pv)
    assert n_hooks(learn.model) == 0 and not isinstance(learn.loss_func, MixedLoss)

@pytest.mark.parametrize('cb', [lambda: ManifoldMixCallback(layers=(2,), generator=gen(0)),
                                lambda: PatchUpCallback('soft', layers=(1,), generator=gen(0))])
def test_callback_hidden_layer_result_and_loss(cb):
    "The loss of a batch mixed at a hidden layer is the mixed loss of the hook's result"
    cb = cb(); made = []
    mf = cb.mix_features
    cb.mix_features = lambda h, y, inplace=False: made.append(mf(h, y, inplace)) or made[-1]
    class Check(Callback):
        order = 70
        def after_loss(self):
            if not self.training: return
            res = made[-1]
            assert cb.res is res and res.extra['layer'] == cb.layers[0] and (res.lam < 1).all()
            assert res.x.shape[1] in (8, 16) # the mixed activation (8 or 16 channels at width 0.125), not the input batch
            torch.testing.assert_close(self.loss, res.loss(self.pred, CrossEntropyLossFlat()))
    learn = fit([cb, Check()])
    assert len(made) == len(learn.dls.train)

def test_callback_hooks_removed_after_cancelled_fit():
    for cb in (ManifoldMixCallback(layers=(1, 2)), PatchUpCallback(layers=('stem', 1), p=1.)):
        learn = fit([cb, CancelAt(1)])
        assert n_hooks(learn.model) == 0 and not isinstance(learn.loss_func, MixedLoss)
        assert learn.train_iter == 2 # cancelled, not finished
        with torch.no_grad(): learn.model(torch.randn(2, 3, 16, 16))

def test_callback_refits_and_bad_layer():
    cb = ManifoldMixCallback(layers=(0, 1))
    learn = fit(cb); learn.fit(1)
    assert n_hooks(learn.model) == 0
    learn = Learner(synth_dls(n=32), create_model('resnet18', width=0.125, num_classes=3), loss_func=CrossEntropyLossFlat(),
                    cbs=PatchUpCallback(layers=(0, 9)))
    with pytest.raises(ValueError, match='layer 9'): learn.fit(1)
    assert n_hooks(learn.model) == 0

def test_callback_layer0_is_mixup_and_patchup_inplace():
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    cb = ManifoldMixCallback(layers=(0,), generator=gen(3))
    assert torch.equal(cb.mix(x.clone(), y).x, mixup(x, y, 2., generator=gen(3)).x)
    cb = PatchUpCallback(layers=(0,), p=1., generator=gen(3))
    xc = x.clone(); res = cb.mix(xc, y)
    assert res.x is xc and torch.equal(res.x, patchup(x, y, generator=gen(3)).x)

def test_callback_timm_and_unreached_layer():
    learn = fit(PatchUpCallback('soft', layers=('stem', 1)), arch='preact_resnet18')
    assert n_hooks(learn.model) == 0
    torch.manual_seed(0)
    learn = Learner(synth_dls(n=32, shape=(3, 32, 32)), create_model('timm:convnext_atto', num_classes=3),
                    loss_func=CrossEntropyLossFlat(), cbs=ManifoldMixCallback(layers=('stem', 2, 4)))
    learn.no_bar(); learn.no_logging(); learn.fit(1)
    assert n_hooks(learn.model) == 0

def test_callback_args():
    with pytest.raises(ValueError, match='alpha'): ManifoldMixCallback(alpha=0)
    with pytest.raises(ValueError, match='layers'): ManifoldMixCallback(layers=[])
    with pytest.raises(ValueError, match='generator'): PatchUpCallback(generator=1)
    with pytest.raises(ValueError, match='p must'): PatchUpCallback(p=2.)
    assert PatchUpCallback().p == 0.7 and PatchUpCallback('soft').p == 1.
    with pytest.raises(NotImplementedError): FeatureMixCallback().mix_features(torch.randn(2, 3, 4, 4), None)
