"Tests of the gallery and the explorer: every registered mixer under the uniform call, the gallery figure, the widget."
import sys
from pathlib import Path
import pytest
import torch
from torch import nn
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.core import MixResult
from openmixup_nb.mixup import mixup
from openmixup_nb.manifoldmix import patchup
from openmixup_nb.switch import MIXERS as SWITCH_MIXERS
from openmixup_nb.gallery import gallery_mixers, mix_gallery, explore_mix, explorer_figure, mix_explorer, MixExplorer

FAST = settings(max_examples=10, deadline=None)

@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
    plt.close('all')

from _helpers import gen

def teacher():
    "A small random CNN giving a feature map at 1/4 resolution: enough for AttentiveMix's mechanics"
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU())

MIXERS = gallery_mixers(teacher(), feat_size=None)
NAMES = list(MIXERS)

def batch(n=4, c=3, h=32, w=32, seed=0):
    g = gen(seed)
    return torch.randn(n, c, h, w, generator=g), torch.randint(0, 10, (n,), generator=g)

def test_registry():
    "Every method of the issue, AttentiveMix only with a teacher, and every input-level mixer of the switch registry"
    assert {'mixup', 'cutmix', 'smoothmix', 'gridmix', 'resizemix', 'fmix', 'saliencymix', 'attentivemix',
            'manifoldmix', 'patchup'} <= set(NAMES)
    assert 'attentivemix' not in gallery_mixers()
    assert set(SWITCH_MIXERS) - {'vanilla'} <= set(NAMES)
    for name, f in MIXERS.items(): assert callable(f), name

@pytest.mark.parametrize('name', NAMES)
def test_mixer_at_half(name):
    "λ = 0.5, a fixed partner index: a MixResult of the right shape, weights in [0, 1] that sum to 1 (or lam_b)"
    x, y = batch(6)
    index = torch.arange(6).roll(-1)
    x0 = x.clone()
    res = MIXERS[name](x, y, lam=0.5, index=index, generator=gen(0))
    assert isinstance(res, MixResult)
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x).all()
    assert torch.equal(res.index, index) and torch.equal(res.y_a, y) and torch.equal(res.y_b, y[index])
    assert res.lam.shape == (6,) and res.weight_b.shape == (6,)
    assert ((res.lam >= 0) & (res.lam <= 1)).all() and ((res.weight_b >= 0) & (res.weight_b <= 1)).all()
    if res.lam_b is None: torch.testing.assert_close(res.lam + res.weight_b, torch.ones(6))
    if res.mask is not None: # λ is the realised share of the first image
        torch.testing.assert_close(res.mask.float().mean((1, 2, 3)).expand(6), res.lam, atol=1e-5, rtol=0)
    torch.testing.assert_close(x, x0) # the caller's batch is not modified

@pytest.mark.parametrize('name', NAMES)
def test_mixer_deterministic_and_identity(name):
    x, y = batch(4, seed=1)
    a = MIXERS[name](x, y, lam=0.5, index=torch.tensor([1, 0, 3, 2]), generator=gen(3))
    b = MIXERS[name](x, y, lam=0.5, index=torch.tensor([1, 0, 3, 2]), generator=gen(3))
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam)
    same = MIXERS[name](x, y, lam=0.5, index=torch.arange(4), generator=gen(3)) # every image its own partner
    assert torch.equal(same.y_b, y)
    if name != 'resizemix': torch.testing.assert_close(same.x, x) # ResizeMix pastes a shrunk copy of the image into itself

@FAST
@given(n=st.integers(1, 5), c=st.sampled_from([1, 3]), h=st.integers(8, 33), alpha=st.floats(0.1, 4.),
       lam=st.floats(0., 1.), seed=st.integers(0, 2**31 - 1))
def test_mixers_vary(n, c, h, alpha, lam, seed):
    "Any batch size, 1 or 3 channels, odd sizes, drawn or fixed λ: valid weights for every method"
    x, y = batch(n, c, h, h, seed)
    for name, f in MIXERS.items():
        if c == 1 and name == 'attentivemix': continue # the teacher takes RGB
        for kw in (dict(alpha=alpha), dict(lam=lam)):
            res = f(x, y, generator=gen(seed), **kw)
            assert res.x.shape == x.shape and torch.isfinite(res.x).all(), name
            assert ((res.lam >= 0) & (res.lam <= 1)).all(), name
            if res.lam_b is None: torch.testing.assert_close(res.lam + res.weight_b, torch.ones(n), msg=name)

def test_gallery_rows():
    x, y = batch(3)
    fig = mix_gallery(x, y, methods=MIXERS, classes=list('abcdefghij'))
    assert len(fig.axes) == (len(MIXERS) + 2) * 3 # two rows of sources, one row per method, one column per pair
    labels = [ax.get_ylabel() for ax in fig.axes[::3]]
    assert labels == ['image', 'partner'] + NAMES
    assert list(fig.results) == NAMES
    fig = mix_gallery(x, y, methods=['mixup'], sources=False)
    assert len(fig.axes) == 3 and [ax.get_ylabel() for ax in fig.axes] == ['mixup', '', '']

def test_gallery_titles_are_realised_weights():
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    index = torch.tensor([2, 3, 0, 1])
    fig = mix_gallery(x, y, index=index, methods=['cutmix'], classes=list('abcd'), seed=5)
    res = MIXERS['cutmix'](x, y, lam=0.5, index=index, generator=gen(5))
    torch.testing.assert_close(fig.results['cutmix'].x, res.x)
    for k, ax in enumerate(fig.axes[8:]):
        la, lb = float(res.lam[k]), float(1 - res.lam[k])
        assert ax.get_title() == f"{'abcd'[k]} {la:.2f}\n{'abcd'[index[k]]} {lb:.2f}".replace(' 0.', ' .')

def test_gallery_mixup_is_half():
    x, y = batch(4)
    fig = mix_gallery(x, y, methods=['mixup'], lam=0.5)
    torch.testing.assert_close(fig.results['mixup'].x, 0.5 * x + 0.5 * x.roll(-1, 0))

def test_bad_methods():
    x, y = batch(2)
    with pytest.raises(ValueError, match='methods'): mix_gallery(x, y, methods=['nope'])
    with pytest.raises(ValueError, match='method'): explorer_figure(x, y, [dict(method='nope')], methods=MIXERS)

@pytest.mark.parametrize('name', NAMES)
def test_explore_mix_is_the_mixer(name):
    x, y = batch(5)
    res = explore_mix(MIXERS[name], x, y, 3, 1, lam=0.3, seed=4)
    ref = MIXERS[name](x[[3, 1]], y[[3, 1]], lam=0.3, index=torch.tensor([1, 0]), generator=gen(4))
    assert torch.equal(res.x, ref.x) and torch.equal(res.lam, ref.lam)
    assert res.y_a[0] == y[3] and res.y_b[0] == y[1]

def test_explorer_recomputes():
    x, y = batch(5)
    w = mix_explorer(x, y, classes=list('abcdefghij'), methods=MIXERS, size=1., dpi=30)
    assert isinstance(w, MixExplorer)
    torch.testing.assert_close(w.result.x[0], 0.5 * x[0] + 0.5 * x[1]) # defaults: first method (mixup), λ = .5, images 0, 1
    png = bytes(w.image.value)
    assert png[:4] == b'\x89PNG'
    w.lam.value = 0.2
    torch.testing.assert_close(w.result.x[0], 0.2 * x[0] + 0.8 * x[1])
    w.i.value, w.j.value = 4, 2
    torch.testing.assert_close(w.result.x[0], 0.2 * x[4] + 0.8 * x[2])
    assert bytes(w.image.value) != png
    for name in NAMES: # every method, fixed λ then drawn λ
        w.method.value = name
        ref = explore_mix(MIXERS[name], x, y, 4, 2, lam=0.2, seed=0)
        assert torch.equal(w.result.x, ref.x) and torch.equal(w.result.lam, ref.lam), name
        assert w.weights.value.startswith(f"<b>{name}</b>")
    w.method.value = 'mixup'
    w.drawn.value = True
    assert w.lam.disabled and not w.alpha.disabled
    w.alpha.value = 0.5; w.seed.value = 3
    ref = mixup(x[[4, 2]], y[[4, 2]], alpha=0.5, index=torch.tensor([1, 0]), generator=gen(3))
    torch.testing.assert_close(w.result.x, ref.x); torch.testing.assert_close(w.result.lam, ref.lam)
    lam = w.result.lam.clone()
    w.redraw.click() # a new seed, a new λ
    assert w.seed.value == 4 and not torch.equal(w.result.lam, lam)
    w.drawn.value = False
    assert not w.lam.disabled and w.alpha.disabled
    torch.testing.assert_close(w.result.lam, torch.full((2,), 0.2))

def test_explorer_weights_text():
    x, y = batch(3)
    w = mix_explorer(x, y, classes=list('abcdefghij'), methods=['mixup'])
    w.lam.value = 0.7
    a, b = 'abcdefghij'[y[0]], 'abcdefghij'[y[1]]
    assert w.weights.value.endswith(f"{a} .70 / {b} .30")

def test_explorer_figure_rows():
    x, y = batch(4)
    fig = explorer_figure(x, y, [dict(method='mixup', lam=l, i=0, j=2) for l in (0.1, 0.9)] + [dict(method='cutmix')],
                          methods=MIXERS)
    assert len(fig.axes) == 3 * 4 and len(fig.results) == 3
    torch.testing.assert_close(fig.results[0].x[0], 0.1 * x[0] + 0.9 * x[2])
    assert fig.axes[11].get_title().startswith('mask of A') # cutmix's mask is shown, mixup has none
    assert fig.axes[3].texts[0].get_text() == 'no mask'

def test_gallery_shows_lam_b():
    "Methods whose weights need not sum to 1 (lam_b): the tile shows lam_b, not 1 - lam"
    def half_and_some(x, y, alpha=1., lam=None, index=None, generator=None):
        res = mixup(x, y, lam=lam, index=index, generator=generator)
        res.lam_b = torch.full_like(res.lam, 0.3)
        return res
    x, y = batch(2)
    fig = mix_gallery(x, y, methods={'odd': half_and_some}, classes=list('abcdefghij'), sources=False)
    assert fig.axes[0].get_title().endswith('.30')
    w = mix_explorer(x, y, classes=list('abcdefghij'), methods={'odd': half_and_some})
    assert w.weights.value.endswith('.30')

def test_input_level_methods():
    "ManifoldMix at the input layer is Mixup; PatchUp at the input is `patchup` on the images"
    x, y = batch(4)
    index = torch.tensor([1, 2, 3, 0])
    a = MIXERS['manifoldmix'](x, y, lam=0.3, index=index, generator=gen(0))
    b = mixup(x, y, lam=0.3, index=index)
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam)
    a = MIXERS['patchup'](x, y, index=index, generator=gen(2))
    b = patchup(x, y, index=index, generator=gen(2))
    assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam)
