"Loss landscapes (openmixup_nb.landscape): filter normalisation, alpha = 0 is the model, weights restored exactly, clear errors."
import math, sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from torch import nn
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.landscape import filter_normalized_direction, landscape_1d, landscape_2d, plot_landscape_1d, plot_landscape_2d
from openmixup_nb.evaluate import predict, accuracy_of
from openmixup_nb.models import create_model

from _helpers import _seed, _one_thread # autouse fixtures: seed 0 per test, one thread per module

def _net(): 
    m = create_model('resnet18', num_classes=4, width=0.125)
    # BN running statistics that are not the defaults, so eval mode matters
    with torch.no_grad(): m.train()(torch.randn(16, 3, 16, 16))
    return m

def _data(n=24, bs=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 4, (n,), generator=g)
    return [(x[i:i + bs], y[i:i + bs]) for i in range(0, n, bs)]

def _state(m): return {k: v.clone() for k, v in m.state_dict().items()}
def _same(m, s): return all(torch.equal(v, s[k]) for k, v in m.state_dict().items()) and set(s) == set(m.state_dict())

def test_filter_normalisation():
    m = _net()
    d = filter_normalized_direction(m, seed=0)
    for k, p in m.named_parameters():
        if p.ndim <= 1: assert (d[k] == 0).all(), k
        else: torch.testing.assert_close(d[k].flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1), rtol=1e-4, atol=1e-6)
    keep = filter_normalized_direction(m, seed=0, ignore_biasbn=False)
    assert all(torch.equal(keep[k], p) for k, p in m.named_parameters() if p.ndim <= 1)
    assert all(torch.equal(v, filter_normalized_direction(m, seed=0)[k]) for k, v in d.items())
    assert not torch.equal(d['fc.weight'], filter_normalized_direction(m, seed=1)['fc.weight'])
    # a filter of zeros (a pruned filter) gets a zero direction, not NaN
    with torch.no_grad(): m.stem[0].weight[0].zero_()
    z = filter_normalized_direction(m)['stem.0.weight']
    assert torch.isfinite(z).all() and (z[0] == 0).all()

@pytest.mark.parametrize('ppf', [1, 3])
def test_alpha_zero_is_the_model(ppf):
    m, dl = _net(), _data()
    scan = landscape_1d(m, dl, n_points=7, span=(-0.5, 0.5), points_per_forward=ppf)
    assert scan.alpha.tolist()[3] == 0.0 and len(scan) == 7
    logits, labels = predict(m, dl)
    at0 = scan.set_index('alpha').loc[0.]
    assert math.isclose(at0.loss, F.cross_entropy(logits, labels).item(), rel_tol=1e-5)
    assert math.isclose(at0.top1, accuracy_of(logits, labels), abs_tol=1e-6)

def test_vmap_and_uncached_equal_the_loop():
    m, dl = _net(), _data()
    ref = landscape_1d(m, dl, n_points=5)
    for kw in (dict(points_per_forward=2), dict(points_per_forward=8), dict(cache=False)):
        other = landscape_1d(m, dl, n_points=5, **kw)
        torch.testing.assert_close(torch.tensor(other.loss.values), torch.tensor(ref.loss.values), rtol=1e-4, atol=1e-5)
        assert (other.top1 - ref.top1).abs().max() <= 100 / 24 + 1e-9 # at most one argmax tie flipped

def test_weights_restored_exactly_and_flags():
    m, dl = _net(), _data()
    m.train(); m.stages[0].eval()
    flags, s = [l.training for l in m.modules()], _state(m)
    params = [p for p in m.parameters()]
    landscape_1d(m, dl, n_points=4, span=(-3, 2))
    landscape_2d(m, dl, n_points=3)
    assert _same(m, s) and [l.training for l in m.modules()] == flags
    assert all(a is b for a, b in zip(params, m.parameters())) # the same Parameter objects: an optimizer still holds them
    assert all(p.grad is None for p in m.parameters())

@pytest.mark.parametrize('cache', [True, False])
def test_weights_restored_after_an_exception(cache):
    m, dl, calls = _net(), _data(), [0]
    s = _state(m)
    def boom(mod, inp, out):
        calls[0] += 1
        if calls[0] == 5: raise RuntimeError('boom mid-scan')
    h = m.fc.register_forward_hook(boom)
    with pytest.raises(RuntimeError, match='boom mid-scan'): landscape_1d(m, dl, n_points=5, cache=cache)
    h.remove()
    assert calls[0] == 5 and _same(m, s)
    class Interrupt(Exception): pass
    def stop(mod, inp, out): raise Interrupt
    h = m.stages[2].register_forward_hook(stop)
    with pytest.raises(Interrupt): landscape_2d(m, dl, n_points=2, points_per_forward=2)
    h.remove()
    assert _same(m, s)

def test_2d_centre_and_axis():
    m, dl = _net(), _data()
    g = landscape_2d(m, dl, n_points=5, span=(-1, 1))
    assert len(g) == 25 and list(g.columns) == ['alpha', 'beta', 'loss', 'top1']
    one = landscape_1d(m, dl, n_points=5, span=(-1, 1), seed=0)
    torch.testing.assert_close(torch.tensor(g[g.beta == 0].loss.values), torch.tensor(one.loss.values))
    d1, d2 = filter_normalized_direction(m, 0), filter_normalized_direction(m, 1)
    g2 = landscape_2d(m, dl, n_points=5, directions=(d1, d2))
    torch.testing.assert_close(torch.tensor(g2.loss.values), torch.tensor(g.loss.values))

def test_learner_default_loader():
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader as FDL
    m, dl = _net(), _data()
    items = [(x, y) for xb, yb in dl for x, y in zip(xb, yb)]
    learn = Learner(DataLoaders(FDL(items, bs=8), FDL(items, bs=8)), m, loss_func=nn.CrossEntropyLoss())
    torch.testing.assert_close(torch.tensor(landscape_1d(learn, n_points=3).loss.values),
                               torch.tensor(landscape_1d(m, dl, n_points=3).loss.values))

def test_bad_inputs():
    m, dl = _net(), _data()
    s = _state(m)
    d = filter_normalized_direction(m)
    cases = [(dict(dl=[x for x, _ in dl]), 'no labels'), (dict(dl=[(x, None) for x, _ in dl]), 'no labels'),
             (dict(dl=[(x, y.float()) for x, y in dl]), 'class indices'),
             (dict(device='meta'), 'move it'), (dict(n_points=1), 'n_points'), (dict(n_points=2.5), 'n_points'),
             (dict(n_points=True), 'n_points'), (dict(span=(0, math.inf)), 'finite'), (dict(span=(math.nan, 1)), 'finite'),
             (dict(span=(1, 1)), 'lo < hi'), (dict(span='ab'), 'two numbers'), (dict(span=(1,)), 'two numbers'),
             (dict(direction={k: v for k, v in list(d.items())[:-1]}), 'one tensor per named parameter'),
             (dict(direction={**d, 'fc.weight': d['fc.weight'][:1]}), "parameter's shape"),
             (dict(direction={**d, 'fc.weight': d['fc.weight'].to('meta')}), 'is on meta'),
             (dict(direction={**d, 'fc.weight': d['fc.weight'] * math.nan}), 'not finite'),
             (dict(points_per_forward=0), 'points_per_forward'), (dict(dl=[]), 'no batches'), (dict(dl=torch.ones(3)), 'iterable')]
    for kw, msg in cases:
        kw = {'dl': dl, **kw}
        with pytest.raises((ValueError, TypeError), match=msg): landscape_1d(m, **kw)
        assert _same(m, s), kw
    with pytest.raises(ValueError, match='dl is needed'): landscape_1d(m)
    with pytest.raises(ValueError, match='has never been trained'): landscape_1d(create_model('resnet18', num_classes=4, width=0.125), dl)
    with pytest.raises(ValueError, match='pair'): landscape_2d(m, dl, directions=(d,))
    with pytest.raises(ValueError, match='n_points'): landscape_2d(m, dl, n_points=1)
    with pytest.raises(TypeError, match='nn.Module'): landscape_1d('resnet', dl)

def test_plots():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    m, dl = _net(), _data()
    s = landscape_1d(m, dl, n_points=5)
    fig = plot_landscape_1d({'a': s, 'b': s}); assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 3; plt.close(fig)
    fig = plot_landscape_1d(s); plt.close(fig)
    g = landscape_2d(m, dl, n_points=4)
    for what in ('loss', 'top1'): plt.close(plot_landscape_2d(g, what))
    with pytest.raises(ValueError, match="'loss' or 'top1'"): plot_landscape_2d(g, 'acc')
    with pytest.raises(TypeError, match='non-empty dict'): plot_landscape_1d({})
