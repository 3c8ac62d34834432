"""The bad-input catalogue: every public mixer function, the mixed loss and every callback, on good, edge-case and
bad inputs. Each case must give a correct result (checked against the properties every `MixResult` has) or a clear
error (a `ValueError`/`TypeError` whose message names the problem): never a crash inside torch, never a silent wrong
answer. A new mixer or callback is swept as soon as it is exported: `test_catalogue_covers_every_mixer` and
`test_catalogue_covers_every_callback` fail until it has an entry here."""
import importlib, inspect, pkgutil, warnings
import pytest, torch, torch.nn as nn, torch.nn.functional as F
from hypothesis import given, settings, HealthCheck, strategies as st
from fastai.torch_core import TensorImage, TensorCategory
from fastai.losses import CrossEntropyLossFlat
import openmixup_nb, openmixup_nb.callbacks as C
from openmixup_nb.core import MixResult, mix_loss, mask_mix, soft_target_cross_entropy
from openmixup_nb.mixup import mixup
from openmixup_nb.cutmix import cutmix
from openmixup_nb.smoothmix import smoothmix
from openmixup_nb.gridmix import gridmix
from openmixup_nb.resizemix import resizemix
from openmixup_nb.fmix import fmix
from openmixup_nb.saliencymix import saliencymix
from openmixup_nb.attentivemix import attentivemix
from openmixup_nb.manifoldmix import manifoldmix, patchup, feature_mix_forward, manifoldmix_forward, patchup_forward
from openmixup_nb.switch import vanilla, mix_switch
from openmixup_nb.automix import automix_pair
from openmixup_nb.guidedmix import guidedmix, guided_saliency
from openmixup_nb.puzzlemix import puzzlemix
from openmixup_nb.alignmix import alignmix, alignmix_forward
from openmixup_nb.models import create_model

N, NC = 6, 5
def _teacher(): return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))

class _Gen(nn.Module):
    "A mask generator with AutoMix's call signature: a smooth mask of mean about λ"
    def forward(self, feat, lam, index, size):
        ramp = torch.linspace(0, 1, size[1], device=feat.device).expand(feat.shape[0], 1, *size)
        return (lam + 0.3 * (ramp - 0.5)).clamp(0, 1)

_NET = {}
def _net(dtype=torch.float32):
    "A small CIFAR net in the batch's dtype (a float64 batch goes through a float64 model)"
    if dtype not in _NET: torch.manual_seed(0); _NET[dtype] = create_model('resnet18', num_classes=NC, width=0.125).to(dtype).eval()
    return _NET[dtype]

def _pair(x, y, **kw):
    n = len(x) if isinstance(x, torch.Tensor) and x.ndim else 0
    feat = torch.zeros(max(n, 1), 4, 2, 2, device=x.device) if n else torch.zeros(0)
    idx = torch.arange(n).flip(0) if n else torch.zeros(0, dtype=torch.long)
    return automix_pair(x, y, feat, _Gen(), 0.4, 0.6, idx, idx, **kw)[0]

def _fwd(f):
    def run(x, y, **kw):
        dt = x.dtype if isinstance(x, torch.Tensor) and x.dtype in (torch.float32, torch.float64) else torch.float32
        out, res = f(_net(dt), x, y, **kw)
        if not torch.isfinite(out).all() and torch.isfinite(torch.as_tensor(x, dtype=torch.float32)).all():
            raise AssertionError("non-finite output from finite input")
        return res
    return run

def _saliency(x):
    "A stand-in saliency for PuzzleMix: |x| over the channels"
    return x.detach().abs().float().mean(1) if isinstance(x, torch.Tensor) and x.ndim == 4 else None

def _len(x): return len(x) if hasattr(x, '__len__') and getattr(x, 'ndim', 1) else 0

# name: (callable(x, y, **kw) -> MixResult, kind). kind: 'blend' (partner pixels blended by res.mask or res.lam),
# 'paste' (a transformed partner under res.mask: only own pixels are checked), 'feature' (mixes hidden features)
MIXERS = {
    'mixup': (mixup, 'blend'), 'mixup sample': (lambda x, y, **k: mixup(x, y, lam_mode='sample', **k), 'blend'),
    'cutmix': (cutmix, 'blend'), 'cutmix sample': (lambda x, y, **k: cutmix(x, y, lam_mode='sample', **k), 'blend'),
    'smoothmix': (smoothmix, 'blend'), 'smoothmix sample': (lambda x, y, **k: smoothmix(x, y, lam_mode='sample', **k), 'blend'),
    'gridmix': (gridmix, 'blend'), 'gridmix sample': (lambda x, y, **k: gridmix(x, y, lam_mode='sample', **k), 'blend'),
    'resizemix': (resizemix, 'paste'), 'resizemix sample': (lambda x, y, **k: resizemix(x, y, lam_mode='sample', **k), 'paste'),
    'fmix': (fmix, 'blend'), 'fmix soft': (lambda x, y, **k: fmix(x, y, max_soft=0.1, **k), 'blend'),
    'fmix sample': (lambda x, y, **k: fmix(x, y, lam_mode='sample', **k), 'blend'),
    'saliencymix': (saliencymix, 'blend'), 'saliencymix one centre': (lambda x, y, **k: saliencymix(x, y, per_image=False, **k), 'blend'),
    'attentivemix': (lambda x, y, **k: attentivemix(x, y, _teacher(), feat_size=None, **k), 'blend'),
    'manifoldmix': (manifoldmix, 'blend'), 'patchup': (patchup, 'blend'),
    'patchup soft': (lambda x, y, **k: patchup(x, y, mode='soft', **k), 'blend'),
    'patchup sample': (lambda x, y, **k: patchup(x, y, lam_mode='sample', **k), 'blend'),
    'vanilla': (vanilla, 'blend'), 'mix_switch': (mix_switch, 'blend'),
    'mix_switch sample': (lambda x, y, **k: mix_switch(x, y, ('mixup', 'cutmix', 'vanilla'), (0.8, 1., None), switch_mode='sample', **k), 'blend'),
    'mix_switch sample, all mixers': (lambda x, y, **k: mix_switch(x, y, ('mixup', 'cutmix', 'fmix', 'smoothmix'), 1., switch_mode='sample', **k), 'blend'),
    'mask_mix bool': (lambda x, y, **k: mask_mix(x, y, torch.rand(1, 1, 16, 16) > 0.5, torch.arange(_len(x)).flip(0), **k), 'blend'),
    'mask_mix float': (lambda x, y, **k: mask_mix(x, y, torch.rand(1, 1, 16, 16).round(decimals=1), torch.arange(_len(x)).flip(0), **k), 'blend'),
    'automix_pair': (_pair, 'blend'),
    'guidedmix': (lambda x, y, **k: guidedmix(x, y, guided_saliency(x, guided_type='sr'), **k), 'blend'),
    'guidedmix random': (lambda x, y, **k: guidedmix(x, y, guided_saliency(x, guided_type='sr'), **{'pairing': 'random', **k}), 'blend'),
    'puzzlemix': (lambda x, y, **k: puzzlemix(x, y, _saliency(x), transport=False, **k), 'blend'),
    'puzzlemix transport': (lambda x, y, **k: puzzlemix(x, y, _saliency(x), **k), 'paste'),
    'alignmix': (alignmix, 'blend'),
    'alignmix sample': (lambda x, y, **k: alignmix(x, y, lam_mode='sample', align='sample', **k), 'blend'),
    'alignmix_forward': (_fwd(alignmix_forward), 'feature'),
    'feature_mix_forward': (_fwd(lambda m, x, y, **k: feature_mix_forward(m, x, y, mixup, **k)), 'feature'),
    'manifoldmix_forward': (_fwd(manifoldmix_forward), 'feature'),
    'patchup_forward': (_fwd(patchup_forward), 'feature'),
}
# functions that take (x, y) and return MixResult but are not mixers of a batch
NOT_MIXERS = {'mix_params': 'returns (λ, index), swept through every mixer',
              'explore_mix': "the explorer's call of a mixer on one pair, swept in test_gallery"}
# the options each function's signature has: swept only where the function takes them
HAS = lambda name, arg: arg in inspect.signature(_base(name)).parameters
def _base(name):
    return {'mixup sample': mixup, 'cutmix sample': cutmix, 'smoothmix sample': smoothmix, 'gridmix sample': gridmix,
            'resizemix sample': resizemix, 'fmix soft': fmix, 'fmix sample': fmix, 'saliencymix one centre': saliencymix,
            'attentivemix': attentivemix, 'patchup soft': patchup, 'patchup sample': patchup, 'mix_switch sample': mix_switch,
            'mix_switch sample, all mixers': mix_switch, 'mask_mix bool': mask_mix, 'mask_mix float': mask_mix,
            'automix_pair': automix_pair, 'feature_mix_forward': feature_mix_forward, 'guidedmix': guidedmix, 'guidedmix random': guidedmix,
            'puzzlemix': puzzlemix, 'puzzlemix transport': puzzlemix, 'alignmix sample': alignmix,
            'alignmix_forward': alignmix_forward,
            'manifoldmix_forward': manifoldmix_forward, 'patchup_forward': patchup_forward}.get(name) or MIXERS[name][0]

def _public_mixers():
    out = {}
    for m in pkgutil.iter_modules(openmixup_nb.__path__):
        mod = importlib.import_module(f'openmixup_nb.{m.name}')
        for n in getattr(mod, '__all__', []):
            f = getattr(mod, n)
            if inspect.isfunction(f) and f.__module__ == mod.__name__ and 'MixResult' in str(inspect.signature(f).return_annotation):
                out[n] = f
    return out

def test_catalogue_covers_every_mixer():
    swept = {_base(k).__name__ for k in MIXERS}
    missing = set(_public_mixers()) - swept - set(NOT_MIXERS)
    assert not missing, f"public mixers without an entry in the bad-input catalogue: {sorted(missing)}"

# ------------------------------------------------------------------------------------------------- checks
def _batch(n=N, dtype=torch.float32, seed=0, hw=16):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, hw, hw, generator=g).to(dtype), torch.randint(0, NC, (n,), generator=g)

def check_result(res, x, y, kind):
    "The properties every mixer's result has"
    assert isinstance(res, MixResult), type(res)
    n = len(x)
    if kind != 'feature':
        assert res.x.shape == x.shape and res.x.dtype == x.dtype and res.x.device == x.device
    assert res.lam.shape == (n,) and res.lam.dtype == torch.float32
    assert res.index.shape == (n,) and res.index.dtype == torch.long
    if x.device.type == 'meta': return
    assert ((res.lam >= 0) & (res.lam <= 1)).all(), res.lam
    assert ((res.index >= 0) & (res.index < n)).all()
    if res.lam_b is None: assert torch.isfinite(res.weight_b).all()
    if y is not None: assert torch.equal(res.y_b, y.index_select(0, res.index.to(y.device)))
    if kind != 'feature' and torch.isfinite(x).all(): assert torch.isfinite(res.x).all()
    if res.mask is not None: assert ((res.mask >= 0) & (res.mask <= 1)).all()

def run_ok(name, x, y, **kw):
    fn, kind = MIXERS[name]
    torch.manual_seed(0)
    res = fn(x, y, **kw)
    check_result(res, x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x,
                 y.as_subclass(torch.Tensor) if isinstance(y, torch.Tensor) else y, kind)
    return res

def clear_error(exc, *words):
    "A clear error: ValueError/TypeError (IndexError only with torch's own 'out of bounds'), naming one of `words`"
    assert isinstance(exc, (ValueError, TypeError, IndexError)), f"{type(exc).__name__}: {exc}"
    msg = str(exc)
    if isinstance(exc, IndexError): assert 'out of bounds' in msg, msg
    assert any(w in msg for w in words), f"the message does not name the problem ({words}): {msg}"

def expect_error(fn, *words):
    try: fn()
    except Exception as e: clear_error(e, *words); return
    raise AssertionError(f"no error: expected one naming {words}")

MIX_NAMES = list(MIXERS)

# ----------------------------------------------------------------------------------------- good and edge inputs
@pytest.mark.parametrize('name', MIX_NAMES)
@pytest.mark.parametrize('case', ['plain', 'float64', 'one-hot targets', 'N=1', 'N=2', 'no labels', 'channels_last',
                                  'non-contiguous', 'requires_grad', 'uint8 labels'])
def test_good_inputs(name, case):
    x, y = _batch()
    if case == 'float64': x = x.double()
    if case == 'one-hot targets': y = F.one_hot(y, NC).float()
    if case == 'N=1': x, y = x[:1], y[:1]
    if case == 'N=2': x, y = x[:2], y[:2]
    if case == 'no labels': y = None
    if case == 'channels_last': x = x.contiguous(memory_format=torch.channels_last)
    if case == 'non-contiguous': x = x.transpose(2, 3)
    if case == 'uint8 labels': y = y.to(torch.uint8)
    if case == 'requires_grad':
        if MIXERS[name][1] == 'feature': return # the forward functions train the model: covered by 'plain'
        x = x.clone().requires_grad_()
        if name == 'automix_pair': return run_ok(name, x, y) # the classifier's batch is mixed without a graph, by design
    if name == 'automix_pair' and y is None: return expect_error(lambda: _pair(x, y), 'y must be')
    res = run_ok(name, x, y)
    if case == 'requires_grad':
        res.x.sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all()

@pytest.mark.parametrize('name', MIX_NAMES)
def test_fastai_tensor_types(name):
    "Batches from fastai's loaders are TensorImage / TensorCategory: mixing and every loss take them"
    x, y = _batch()
    res = run_ok(name, TensorImage(x), TensorCategory(y))
    pred = TensorImage(torch.randn(N, NC))
    ref = _ref_loss(pred.as_subclass(torch.Tensor), res)
    for lf in (F.cross_entropy, nn.CrossEntropyLoss(), CrossEntropyLossFlat()):
        torch.testing.assert_close(res.loss(pred, lf), ref)

def _ref_loss(pred, res):
    "λ·CE(y_a) + w_b·CE(y_b) per sample, then the mean: the mixed loss by its definition"
    ya, yb = (t.as_subclass(torch.Tensor).reshape(len(pred)) for t in (res.y_a, res.y_b))
    la, lb = F.cross_entropy(pred, ya.long(), reduction='none'), F.cross_entropy(pred, yb.long(), reduction='none')
    return (res.lam * la + res.weight_b * lb).mean()

@pytest.mark.parametrize('name', MIX_NAMES)
def test_column_labels(name):
    "(N, 1) class indices, which fastai's flat losses take unmixed, give the same mix and loss as (N,)"
    x, y = _batch()
    r1, r2 = run_ok(name, x, y), run_ok(name, x, y[:, None])
    assert torch.equal(r1.index, r2.index) and torch.equal(r1.lam, r2.lam)
    pred = torch.randn(N, NC)
    for lf in (F.cross_entropy, nn.CrossEntropyLoss(), CrossEntropyLossFlat()):
        torch.testing.assert_close(r2.loss(pred, lf), r1.loss(pred, lf))
    torch.testing.assert_close(r1.loss(pred, F.cross_entropy), _ref_loss(pred, r1))
    torch.testing.assert_close(r2.soft_target(NC), r1.soft_target(NC))

@pytest.mark.parametrize('name', [n for n in MIX_NAMES if MIXERS[n][1] != 'feature'])
def test_meta_device(name):
    "A batch on the meta device (shape inference) mixes without host round trips, or says why not"
    x, y = _batch()
    try: res = MIXERS[name][0](x.to('meta'), y.to('meta'))
    except Exception as e: return clear_error(e, 'meta')
    check_result(res, x.to('meta'), y.to('meta'), MIXERS[name][1])

# ------------------------------------------------------------------------------------------- non-finite input
@pytest.mark.parametrize('name', [n for n in MIX_NAMES if MIXERS[n][1] != 'feature' and n not in ('attentivemix', 'automix_pair', 'puzzlemix transport', 'alignmix', 'alignmix sample')])
def test_non_finite_input(name):
    """inf and NaN in some images: where a sample's weight is exactly 1 its pixels are its own, where it is 0 its
    partner's, in between the blend (an inf stays inf, NaN spreads only where it has weight)"""
    x, y = _batch(n=8, hw=16)
    x[0, :, 2:9, 3:12] = float('inf'); x[1, 1, 5:14, :] = float('-inf'); x[2, 0, :, 4:10] = float('nan')
    res = run_ok(name, x, y, **({'return_mask': True} if HAS(name, 'return_mask') else {}))
    if res.mask is None:
        # a batch switch that drew cutmix returns no mask: its mixers are swept on their own
        if name == 'mix_switch': return
        assert name in ('mixup', 'mixup sample', 'vanilla', 'manifoldmix'), f"{name} returned no mask to check against"
    w = (res.mask if res.mask is not None else res.lam.view(-1, 1, 1, 1)).double().expand(x.shape)
    xa, xb = x.double(), x.double().index_select(0, res.index)
    out = res.x.double()
    own = w == 1
    assert torch.equal(out[own].isnan(), xa[own].isnan()) and torch.equal(out[own].nan_to_num(), xa[own].nan_to_num()), \
        "a partner's value reached a pixel the sample keeps as its own"
    if MIXERS[name][1] == 'paste': return # the partner is resized before pasting: only own pixels are comparable
    gone = w == 0
    assert torch.equal(out[gone].nan_to_num(), xb[gone].nan_to_num()) and torch.equal(out[gone].isnan(), xb[gone].isnan()), \
        "the sample's own value reached a pixel that is all partner"
    mid = ~own & ~gone
    exp = (w * xa + (1 - w) * xb)[mid] # the blend's arithmetic: inf·w + finite is inf, inf - inf is NaN
    torch.testing.assert_close(out[mid], exp, equal_nan=True, rtol=1e-5, atol=1e-5)

# ------------------------------------------------------------------------------------------------ bad inputs
BAD = {
    'uint8 images': (lambda x, y: (x.mul(40).clamp(0, 255).to(torch.uint8), y), ('floating', 'float')),
    'list input': (lambda x, y: (x.tolist(), y), ('torch.Tensor', 'must be a')),
    'numpy input': (lambda x, y: (x.numpy(), y), ('torch.Tensor', 'must be a')),
    'labels too short': (lambda x, y: (x, y[:-1]), ('label',)),
    'labels too long': (lambda x, y: (x, torch.cat([y, y[:1]])), ('label',)),
    '0-d label': (lambda x, y: (x, y[0]), ('label',)),
    'list labels': (lambda x, y: (x, y.tolist()), ('y must be', 'torch.Tensor')),
    'one image (C, H, W), one label': (lambda x, y: (x[0], y[:1]), ('batch dimension', 'dimensions', 'batch first', '(N, C, H, W)')),
    'empty batch': (lambda x, y: (x[:0], y[:0]), ('empty',)),
    '(N, D) features': (lambda x, y: (x.flatten(1), y), ('dimensions', 'shape', 'image batch', '(N, C, H, W)')),
}
FEATURE_OK = {'(N, D) features'} # mixup and the feature mixers take any (N, ...)

@pytest.mark.parametrize('name', MIX_NAMES)
@pytest.mark.parametrize('case', list(BAD))
def test_bad_batches(name, case):
    x, y = BAD[case][0](*_batch())
    if case in FEATURE_OK and name in ('mixup', 'mixup sample', 'vanilla', 'manifoldmix'):
        return run_ok(name, x, y)
    if case in FEATURE_OK and MIXERS[name][1] == 'feature': # the model judges its input: torch's own message for it
        with pytest.raises(RuntimeError, match='input'): MIXERS[name][0](x, y)
        return
    expect_error(lambda: MIXERS[name][0](x, y), *BAD[case][1])

BAD_OPTS = [('alpha', 0.), ('alpha', -1.), ('alpha', float('nan')), ('alpha', float('inf')), ('alpha', True),
            ('alpha', torch.tensor(1.)), ('alpha', '1'), ('lam', 1.5), ('lam', -0.1), ('lam', float('nan')),
            ('lam', torch.ones(N + 1) / 2), ('index', torch.arange(N).float()), ('index', torch.arange(N - 1)),
            ('index', torch.arange(N) + 1), ('lam_mode', 'pixel'), ('pairing', 'shuffle'), ('generator', 0),
            ('inplace', 'yes')]

@pytest.mark.parametrize('name', MIX_NAMES)
@pytest.mark.parametrize('arg,value', BAD_OPTS, ids=[f'{a}={v!r}'[:30] for a, v in BAD_OPTS])
def test_bad_options_name_the_option(name, arg, value):
    if not HAS(name, arg) or (name.startswith('mask_mix') and arg == 'index') or (name == 'automix_pair'): return
    x, y = _batch()
    if arg == 'inplace':
        try: MIXERS[name][0](x, y, **{arg: value}); return # a truthy value: mixes in place, as asked
        except Exception as e: return clear_error(e, arg)
    expect_error(lambda: MIXERS[name][0](x, y, **{arg: value}), arg)

def test_automix_pair_bad_inputs():
    x, y = _batch()
    idx = torch.arange(N).flip(0)
    feat = torch.zeros(N, 4, 2, 2)
    expect_error(lambda: automix_pair(x, y, feat, _Gen(), 1.5, 0.5, idx, idx), 'lam_mb')
    expect_error(lambda: automix_pair(x, y, feat, _Gen(), 0.5, torch.tensor(.5), idx, idx), 'lam_bb')
    expect_error(lambda: automix_pair(x, y, feat, _Gen(), 0.5, 0.5, idx[:-1], idx), 'index')
    expect_error(lambda: automix_pair(x, y, feat, _Gen(), 0.5, 0.5, idx + 1, idx), 'index')
    expect_error(lambda: automix_pair(x, y, feat[:2], _Gen(), 0.5, 0.5, idx, idx), 'feat')

# ---------------------------------------------------------------------------------------------- the loss
def test_loss_float_class_indices_refused():
    "Float class indices are not soft targets: with N equal to the classes they used to broadcast silently"
    x, y = _batch(n=NC)
    res = mixup(x, y.float())
    pred = torch.randn(NC, NC)
    for lf in (F.cross_entropy, nn.CrossEntropyLoss(), CrossEntropyLossFlat(), soft_target_cross_entropy):
        expect_error(lambda: res.loss(pred, lf), 'integers', 'y.long()')

def test_loss_float_targets_wrong_width():
    x, y = _batch()
    res = mixup(x, F.one_hot(y, NC + 1).float())
    expect_error(lambda: res.loss(torch.randn(N, NC), nn.CrossEntropyLoss()), f'(N, {NC})')

@pytest.mark.parametrize('lf', [F.cross_entropy, nn.CrossEntropyLoss(), CrossEntropyLossFlat(), nn.CrossEntropyLoss(label_smoothing=0.1)])
def test_loss_class_out_of_range(lf):
    x, y = _batch(); y[2] = NC + 2
    res = mixup(x, y)
    expect_error(lambda: res.loss(torch.randn(N, NC), lf), 'out of bounds')

def test_loss_bad_pred_and_reduction():
    x, y = _batch(); res = mixup(x, y)
    expect_error(lambda: res.loss(torch.randn(N - 1, NC), F.cross_entropy), 'samples')
    expect_error(lambda: res.loss(torch.tensor(1.), F.cross_entropy), 'samples')
    expect_error(lambda: res.loss(torch.randn(N, NC).tolist(), F.cross_entropy), 'pred must be')
    expect_error(lambda: res.loss(torch.randn(N, NC), F.cross_entropy, reduction='avg'), 'reduction')

@given(n=st.integers(1, 9), c=st.integers(2, 7), seed=st.integers(0, 2**16), col=st.booleans(), ignore=st.booleans())
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_loss_matches_definition(n, c, seed, col, ignore):
    "The short cross-entropy path equals the definition, for (N,) and (N, 1) labels and with ignored samples"
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, c, (n,), generator=g)
    if ignore and n > 1: y[0] = -100
    res = mixup(x, y[:, None] if col else y, generator=g, lam_mode='sample')
    pred = torch.randn(n, c, generator=g, dtype=torch.float64)
    la = F.cross_entropy(pred, res.y_a.reshape(n), reduction='none'); lb = F.cross_entropy(pred, res.y_b.reshape(n), reduction='none')
    wa, wb = (res.y_a.reshape(n) != -100).double(), (res.y_b.reshape(n) != -100).double()
    lam = res.lam.double()
    norm = (lam * wa + (1 - lam) * wb).sum()
    if norm == 0: return
    torch.testing.assert_close(res.loss(pred, F.cross_entropy), (lam * la + (1 - lam) * lb).sum() / norm)

# ------------------------------------------------------------------------------------------------ callbacks
from fastai.learner import Learner
from fastai.callback.core import Callback
from openmixup_nb.callback import synth_dls

CALLBACKS = {
    'MixupCallback': lambda: C.MixupCallback(), 'CutMixCallback': lambda: C.CutMixCallback(),
    'MixSwitchCallback': lambda: C.MixSwitchCallback(), 'SmoothMixCallback': lambda: C.SmoothMixCallback(),
    'GridMixCallback': lambda: C.GridMixCallback(), 'ResizeMixCallback': lambda: C.ResizeMixCallback(),
    'FMixCallback': lambda: C.FMixCallback(), 'SaliencyMixCallback': lambda: C.SaliencyMixCallback(),
    'AttentiveMixCallback': lambda: C.AttentiveMixCallback(_teacher(), feat_size=None),
    'ManifoldMixCallback': lambda: C.ManifoldMixCallback(),
    'PatchUpCallback': lambda: C.PatchUpCallback(), 'AutoMixCallback': lambda: C.AutoMixCallback(),
    'SAMixCallback': lambda: C.SAMixCallback(), 'AdAutoMixCallback': lambda: C.AdAutoMixCallback(),
    'GuidedMixupCallback': lambda: C.GuidedMixupCallback(), 'PuzzleMixCallback': lambda: C.PuzzleMixCallback(),
    'AlignMixCallback': lambda: C.AlignMixCallback(),
}
NOT_CALLBACKS = {'MixCallback': 'the base class', 'FeatureMixCallback': 'the base of ManifoldMix and PatchUp', 'LearnableMixCallback': "the learned mixers' base", 'MixedLoss': 'not a callback'}

def test_catalogue_covers_every_callback():
    exported = {n for n in C.__all__ if inspect.isclass(getattr(C, n))}
    missing = exported - set(CALLBACKS) - set(NOT_CALLBACKS)
    assert not missing, f"callbacks without an entry in the bad-input catalogue: {sorted(missing)}"

class _Batch(Callback):
    "Turn the loader's batch into the case under test, before the mixing callback sees it"
    order = -10
    def __init__(self, f): self.f = f
    def before_batch(self):
        x, y = self.f(self.xb[0], self.yb[0])
        self.learn.xb, self.learn.yb = (x,), (y,)

_DLS = {}
def _dls():
    if 'd' not in _DLS: _DLS['d'] = synth_dls(n=32, n_classes=NC, shape=(3, 32, 32), bs=16)
    return _DLS['d']

def _fit(cb, f=None, double=False):
    torch.manual_seed(0)
    model = create_model('resnet18', num_classes=NC, width=0.125)
    if double: model = model.double()
    cbs = [cb] + ([_Batch(f)] if f else [])
    learn = Learner(_dls(), model, loss_func=CrossEntropyLossFlat(), cbs=cbs)
    with learn.no_bar(), learn.no_logging(), warnings.catch_warnings():
        warnings.simplefilter('ignore', UserWarning)
        learn.fit(1, 1e-3)
    return learn

CB_CASES = {
    'plain': (None, False), 'float64 model': (lambda x, y: (x.double(), y), True),
    '(N, 1) labels': (lambda x, y: (x, y[:, None]), False),
    'fastai tensor types': (lambda x, y: (TensorImage(x), TensorCategory(y)), False),
}

@pytest.mark.parametrize('name', list(CALLBACKS))
@pytest.mark.parametrize('case', list(CB_CASES))
def test_callback_trains(name, case):
    f, double = CB_CASES[case]
    learn = _fit(CALLBACKS[name](), f, double)
    losses = [float(l) for l in learn.recorder.losses]
    assert losses and all(map(torch.isfinite, map(torch.tensor, losses))), losses
    assert learn.recorder.losses[-1].dtype == torch.float32

@pytest.mark.parametrize('name', list(CALLBACKS))
def test_callback_uint8_images(name):
    try: _fit(CALLBACKS[name](), lambda x, y: (x.mul(40).clamp(0, 255).to(torch.uint8), y))
    except Exception as e: return clear_error(e, 'floating', 'float')
    raise AssertionError('uint8 images trained without an error')

@pytest.mark.parametrize('name', [n for n in CALLBACKS if 'alpha' in inspect.signature(getattr(C, n).__init__).parameters])
@pytest.mark.parametrize('alpha', [0., -1., float('nan'), True, torch.tensor(1.), '1'])
def test_callback_bad_alpha(name, alpha):
    cls = getattr(C, name)
    extra = (_teacher(),) if name == 'AttentiveMixCallback' else ()
    expect_error(lambda: cls(*extra, alpha=alpha), 'alpha')

@pytest.mark.parametrize('name', list(CALLBACKS))
@pytest.mark.parametrize('p', [-0.1, 1.5, float('nan'), '1'])
def test_callback_bad_p(name, p):
    cls = getattr(C, name)
    if 'p' not in inspect.signature(cls.__init__).parameters: return # the learned mixers mix every batch
    extra = (_teacher(),) if name == 'AttentiveMixCallback' else ()
    try: cls(*extra, p=p)
    except Exception as e: return clear_error(e, 'p (the probability', 'p must')
    raise AssertionError(f'p={p!r} accepted')

@pytest.mark.parametrize('name', list(CALLBACKS))
def test_callback_mix_outside_a_fit(name):
    "`cb.mix(x, y)` on its own (as in a notebook, before any fit), on fastai's tensor types"
    cb = CALLBACKS[name]()
    torch.manual_seed(0)
    learn = Learner(_dls(), create_model('resnet18', num_classes=NC, width=0.125), loss_func=CrossEntropyLossFlat(), cbs=cb)
    learn.create_opt()
    if hasattr(cb, 'build'): cb.build()
    x, y = _dls().one_batch()
    x, y = TensorImage(x), TensorCategory(y)
    learn.xb, learn.yb = (x,), (y,)
    res = cb.mix(x, y)
    check_result(res, x.as_subclass(torch.Tensor), y.as_subclass(torch.Tensor), 'blend')
    loss = res.loss(learn.model(res.x), CrossEntropyLossFlat())
    assert loss.ndim == 0 and torch.isfinite(loss)
