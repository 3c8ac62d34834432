"The per-sample mixed loss (`mix_loss`, `MixResult.loss`): every loss family, reductions, gradients, segmentation."
import sys
from pathlib import Path
import pytest
import torch
from torch import nn
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.core import MixResult, mix_loss, soft_target_cross_entropy, to_soft
from openmixup_nb.mixup import mixup
from fastai.losses import CrossEntropyLossFlat, LabelSmoothingCrossEntropyFlat, BCEWithLogitsLossFlat

FAST = settings(max_examples=30, deadline=None)

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

from _helpers import gen

def make(n=8, c=5, seed=0, lam_b=False):
    "Logits, integer labels and a result with distinct per-sample λ (some at 0 and 1) and a random partner"
    g = gen(seed)
    pred = torch.randn(n, c, generator=g) * 2
    y = torch.randint(0, c, (n,), generator=g)
    index = torch.randperm(n, generator=g)
    lam = torch.rand(n, generator=g); lam[0] = 0.; lam[-1] = 1.
    res = MixResult(x=torch.zeros(n, 1), y_a=y, y_b=y[index], lam=lam, index=index,
                    lam_b=torch.rand(n, generator=g) if lam_b else None)
    return pred, y, res

# independent references, written from the formulas (no library code, no reduction='none' of the loss under test)
def ce_i(pred, y, eps=0.):
    "Per-sample cross-entropy with torch-style label smoothing ε: (1-ε)·(-log p_y) + ε·mean_c(-log p_c)"
    logp = pred.double().log_softmax(-1)
    nll = -logp.gather(-1, y[:, None])[:, 0]
    return (1 - eps) * nll + eps * (-logp.mean(-1))

def ref_mixed(pred, res, eps=0.):
    wb = 1 - res.lam if res.lam_b is None else res.lam_b
    return res.lam.double() * ce_i(pred, res.y_a, eps) + wb.double() * ce_i(pred, res.y_b, eps)  # (N,)

def bug_03(pred, res):
    "OpenMixup §0.3: batch-mean CE times per-sample λ, then averaged"
    return (res.lam.double().mean() * ce_i(pred, res.y_a).mean() + (1 - res.lam.double()).mean() * ce_i(pred, res.y_b).mean())

LOSSES = {
    'F.cross_entropy': (lambda: F.cross_entropy, 0.),
    'nn.CrossEntropyLoss': (lambda: nn.CrossEntropyLoss(), 0.),
    'nn.CrossEntropyLoss(ls=0.1)': (lambda: nn.CrossEntropyLoss(label_smoothing=0.1), 0.1),
    'CrossEntropyLossFlat': (lambda: CrossEntropyLossFlat(), 0.),
    'LabelSmoothingCrossEntropyFlat': (lambda: LabelSmoothingCrossEntropyFlat(eps=0.1), 0.1),
    'soft_target_cross_entropy': (lambda: soft_target_cross_entropy, 0.),
}
try:
    from timm.loss import SoftTargetCrossEntropy
    LOSSES['timm.SoftTargetCrossEntropy'] = (lambda: SoftTargetCrossEntropy(), 0.)
except ImportError: pass

@pytest.mark.parametrize('name', list(LOSSES))
@pytest.mark.parametrize('seed', [0, 1])
def test_per_sample_lam_loss(name, seed):
    make_loss, eps = LOSSES[name]
    lf = make_loss()
    pred, y, res = make(seed=seed)
    ref = ref_mixed(pred, res, eps).mean()
    out = mix_loss(pred, res, lf)
    assert out.ndim == 0
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.loss(pred, lf).double(), ref, atol=1e-5, rtol=1e-5)
    assert abs(float(bug_03(pred, res)) - float(ref)) > 1e-2  # the §0.3 value is measurably different here

def test_bug_03_regression_extreme():
    "λ = (1, 0): each sample's loss is only its own label's; the batch-mean λ would give each half the weight"
    pred = torch.tensor([[4., 0.], [0., 4.]])
    res = MixResult(x=torch.zeros(2, 1), y_a=torch.tensor([0, 0]), y_b=torch.tensor([1, 1]),
                    lam=torch.tensor([1., 0.]), index=torch.tensor([1, 0]))
    lo = float(F.cross_entropy(pred[:1], torch.tensor([0])))  # both samples are "right": tiny loss
    torch.testing.assert_close(mix_loss(pred, res, F.cross_entropy), torch.tensor(lo))
    assert float(bug_03(pred, res)) > 1.  # the buggy formula would report ≈ 2

@pytest.mark.parametrize('lf', [lambda: nn.BCEWithLogitsLoss(), lambda: BCEWithLogitsLossFlat(),
                                lambda: F.binary_cross_entropy_with_logits])
@pytest.mark.parametrize('red', [None, 'mean', 'sum', 'none'])
def test_bce_multilabel_mixes_the_target(lf, red):
    lf = lf()
    g = gen(3)
    pred, ya = torch.randn(6, 4, generator=g), (torch.rand(6, 4, generator=g) > 0.5).float()
    index, lam = torch.randperm(6, generator=g), torch.rand(6, generator=g)
    res = MixResult(x=torch.zeros(6, 1), y_a=ya, y_b=ya[index], lam=lam, index=index)
    t = lam[:, None] * ya + (1 - lam[:, None]) * ya[index]
    elem = F.binary_cross_entropy_with_logits(pred, t, reduction='none')
    out = mix_loss(pred, res, lf, reduction=red)
    # 'none': one loss per sample, the mean over its elements (so that 'mean' == 'none'.mean() here)
    ref = {None: elem.mean(), 'mean': elem.mean(), 'sum': elem.sum(), 'none': elem.mean(1)}[red]
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)

def test_mixup_then_bce_multilabel():
    x, yml = torch.randn(5, 3), (torch.rand(5, 7) > 0.6).float()
    res = mixup(x, yml, lam_mode='sample', generator=gen(0))
    pred = torch.randn(5, 7)
    torch.testing.assert_close(mix_loss(pred, res, BCEWithLogitsLossFlat()),
                               F.binary_cross_entropy_with_logits(pred, res.lam[:, None] * yml + (1 - res.lam[:, None]) * yml[res.index]))

def test_one_hot_labels_equal_integer_labels():
    pred, y, res = make(seed=4)
    e = torch.eye(5)
    r1 = MixResult(x=res.x, y_a=e[res.y_a], y_b=e[res.y_b], lam=res.lam, index=res.index)
    for red in ['mean', 'sum', 'none']:
        torch.testing.assert_close(mix_loss(pred, r1, nn.CrossEntropyLoss(), red), mix_loss(pred, res, nn.CrossEntropyLoss(), red))
    torch.testing.assert_close(mix_loss(pred, r1, soft_target_cross_entropy), mix_loss(pred, res, F.cross_entropy))

def test_float_labels_with_index_only_loss_raise():
    pred, y, res = make()
    r1 = MixResult(x=res.x, y_a=torch.eye(5)[res.y_a], y_b=torch.eye(5)[res.y_b], lam=res.lam, index=res.index)
    with pytest.raises(ValueError, match='class indices'): mix_loss(pred, r1, CrossEntropyLossFlat())

@pytest.mark.parametrize('name', ['F.cross_entropy', 'nn.CrossEntropyLoss', 'CrossEntropyLossFlat',
                                  'soft_target_cross_entropy'])
def test_lam_b_respected(name):
    pred, y, res = make(seed=5, lam_b=True)
    assert not torch.allclose(res.lam + res.lam_b, torch.ones(8))
    ref = ref_mixed(pred, res).mean()
    torch.testing.assert_close(mix_loss(pred, res, LOSSES[name][0]()).double(), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(res.weight_b, res.lam_b)
    t = res.soft_target(5)
    torch.testing.assert_close(t.sum(1), res.lam + res.lam_b)

@pytest.mark.parametrize('name', ['F.cross_entropy', 'nn.CrossEntropyLoss', 'CrossEntropyLossFlat',
                                  'LabelSmoothingCrossEntropyFlat', 'nn.CrossEntropyLoss(ls=0.1)'])
def test_reductions(name):
    make_loss, eps = LOSSES[name]
    pred, y, res = make(seed=6)
    per = ref_mixed(pred, res, eps)
    lf = make_loss()
    torch.testing.assert_close(mix_loss(pred, res, lf, 'mean').double(), per.mean(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mix_loss(pred, res, lf, 'sum').double(), per.sum(), atol=1e-5, rtol=1e-5)
    out = mix_loss(pred, res, lf, 'none')
    assert out.shape == (8,)
    torch.testing.assert_close(out.double(), per, atol=1e-5, rtol=1e-5)
    if hasattr(lf, 'reduction'): assert lf.reduction == 'mean'
    with pytest.raises(ValueError, match='reduction'): mix_loss(pred, res, lf, 'max')

def test_loss_own_reduction_is_the_default():
    pred, y, res = make(seed=7)
    per = ref_mixed(pred, res)
    torch.testing.assert_close(mix_loss(pred, res, nn.CrossEntropyLoss(reduction='sum')).double(), per.sum(), atol=1e-5, rtol=1e-5)
    out = mix_loss(pred, res, CrossEntropyLossFlat(reduction='none'))
    torch.testing.assert_close(out.double(), per, atol=1e-5, rtol=1e-5)

def test_soft_only_loss_reductions():
    pred, y, res = make()
    with pytest.raises(ValueError, match='reduction'): mix_loss(pred, res, soft_target_cross_entropy, 'sum')
    with pytest.raises(ValueError, match='reduction'): mix_loss(pred, res, soft_target_cross_entropy, 'none')

class Exploding(nn.CrossEntropyLoss):
    def forward(self, pred, target):
        assert self.reduction == 'none'
        raise RuntimeError('inside the loss')

@pytest.mark.parametrize('lf', [lambda: Exploding(), lambda: nn.CrossEntropyLoss(reduction='sum'),
                                lambda: CrossEntropyLossFlat(), lambda: LabelSmoothingCrossEntropyFlat()])
def test_reduction_restored_when_loss_raises(lf):
    lf = lf()
    before = lf.reduction
    pred, y, res = make()
    bad = pred[:, :2]  # labels up to 4 with 2 classes: the loss raises
    with pytest.raises((RuntimeError, IndexError, ValueError)): mix_loss(pred if isinstance(lf, Exploding) else bad, res, lf)
    assert lf.reduction == before
    if hasattr(lf, 'func'): assert lf.func.reduction == before
    if isinstance(lf, Exploding): return
    mix_loss(pred, res, lf)  # still usable, and still restored
    assert lf.reduction == before

def test_errors():
    pred, y, res = make()
    with pytest.raises(ValueError, match='samples'): mix_loss(pred[:4], res, F.cross_entropy)
    with pytest.raises(ValueError, match='per-sample'):
        mix_loss(pred, res, lambda p, t, reduction='mean': F.cross_entropy(p, t))

@pytest.mark.parametrize('name,red', [(n, r) for n in ['F.cross_entropy', 'nn.CrossEntropyLoss', 'CrossEntropyLossFlat',
                                                        'nn.CrossEntropyLoss(ls=0.1)'] for r in ['mean', 'sum']]
                         + [('soft_target_cross_entropy', 'mean')])  # soft-only losses reduce with 'mean' only
def test_gradient_is_per_sample_weighted(name, red):
    make_loss, eps = LOSSES[name]
    pred, y, res = make(seed=8)
    pred = pred.requires_grad_()
    (g,) = torch.autograd.grad(mix_loss(pred, res, make_loss(), red), pred)
    # d/dz of Σ_i w_i·CE(z_i, t_i) with the mixed, smoothed soft target t_i: w·(softmax(z_i) - t_i)
    t = res.soft_target(5, smoothing=eps)
    ref = (pred.detach().softmax(-1) - t)
    if red == 'mean': ref = ref / len(pred)
    torch.testing.assert_close(g, ref, atol=1e-6, rtol=1e-5)
    # and the same as autograd through the independent per-sample reference
    p2 = pred.detach().double().requires_grad_()
    (g2,) = torch.autograd.grad(getattr(ref_mixed(p2, res, eps), red)(), p2)
    torch.testing.assert_close(g.double(), g2, atol=1e-6, rtol=1e-5)

@pytest.mark.parametrize('lf', [lambda: nn.CrossEntropyLoss(), lambda: F.cross_entropy, lambda: CrossEntropyLossFlat(axis=1)])
@pytest.mark.parametrize('red', ['mean', 'sum', 'none'])
def test_segmentation_per_sample(lf, red):
    g = gen(9)
    n, c, h, w = 4, 3, 5, 7
    pred, y = torch.randn(n, c, h, w, generator=g), torch.randint(0, c, (n, h, w), generator=g)
    index, lam = torch.randperm(n, generator=g), torch.rand(n, generator=g)
    res = MixResult(x=torch.zeros(n, 1, h, w), y_a=y, y_b=y[index], lam=lam, index=index)
    logp = pred.double().log_softmax(1)
    ce = lambda t: -logp.gather(1, t[:, None])[:, 0]  # (N, H, W)
    per_px = lam.double()[:, None, None] * ce(y) + (1 - lam.double())[:, None, None] * ce(y[index])
    out = mix_loss(pred, res, lf(), red)
    if red == 'mean': torch.testing.assert_close(out.double(), per_px.mean(), atol=1e-6, rtol=1e-5)
    if red == 'sum': torch.testing.assert_close(out.double(), per_px.sum(), atol=1e-5, rtol=1e-5)
    if red == 'none':
        assert out.shape == (n,)  # one loss per sample: the mean over its pixels
        torch.testing.assert_close(out.double(), per_px.mean((1, 2)), atol=1e-5, rtol=1e-5)

@pytest.mark.parametrize('case', ['ignore_index', 'weight'])
def test_unmixed_loss_equals_plain_loss_with_normalising_options(case):
    g = gen(10)
    if case == 'ignore_index':
        pred, y = torch.randn(4, 3, 5, 5, generator=g), torch.randint(0, 3, (4, 5, 5), generator=g)
        y[0, :3] = -100  # unlabelled pixels
        lf = nn.CrossEntropyLoss(ignore_index=-100)
    else:
        pred, y = torch.randn(6, 3, generator=g), torch.randint(0, 3, (6,), generator=g)
        lf = nn.CrossEntropyLoss(weight=torch.tensor([1., 2., 5.]))
    n = len(pred)
    res = MixResult(x=torch.zeros(n, 1), y_a=y, y_b=y, lam=torch.ones(n), index=torch.arange(n))
    torch.testing.assert_close(mix_loss(pred, res, lf), lf(pred, y))

@pytest.mark.parametrize('lf', [F.cross_entropy, nn.CrossEntropyLoss(), CrossEntropyLossFlat(), soft_target_cross_entropy])
def test_unmixed_loss_equals_plain_loss(lf):
    pred, y, _ = make(seed=11)
    res = MixResult(x=torch.zeros(8, 1), y_a=y, y_b=y, lam=torch.rand(8), index=torch.arange(8))
    plain = lf(pred, torch.eye(5)[y]) if lf is soft_target_cross_entropy else lf(pred, y)
    torch.testing.assert_close(mix_loss(pred, res, lf), plain)

@FAST
@given(n=st.integers(1, 12), c=st.integers(2, 9), seed=st.integers(0, 2**31 - 1), eps=st.sampled_from([0., 0.1, 0.3]),
       red=st.sampled_from(['mean', 'sum', 'none']))
def test_mix_loss_equals_soft_target_ce(n, c, seed, eps, red):
    "With random per-sample λ and partners, the mixed hard-label loss is soft-target CE on the mixed target"
    g = gen(seed)
    pred = torch.randn(n, c, generator=g) * 3
    y = torch.randint(0, c, (n,), generator=g)
    res = mixup(torch.randn(n, 2, generator=g), y, lam_mode='sample', alpha=0.5, generator=g)
    t = res.soft_target(c, smoothing=eps)
    assert (t >= 0).all()
    torch.testing.assert_close(t.sum(1), torch.ones(n))
    per = -(t.double() * pred.double().log_softmax(-1)).sum(-1)
    out = mix_loss(pred, res, nn.CrossEntropyLoss(label_smoothing=eps), red)
    ref = per if red == 'none' else getattr(per, red)()
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)
    if red == 'mean':
        torch.testing.assert_close(mix_loss(pred, res, soft_target_cross_entropy).double() if eps == 0 else
                                   soft_target_cross_entropy(pred, t).double(), per.mean(), atol=1e-5, rtol=1e-5)

def test_to_soft_checks():
    assert torch.equal(to_soft(torch.tensor([0, 2]), 3), torch.tensor([[1., 0, 0], [0, 0, 1]]))
    with pytest.raises(ValueError, match='n_classes'): to_soft(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match='class indices'): to_soft(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match='smoothing'): to_soft(torch.tensor([0]), 3, smoothing=1.)
    with pytest.raises(ValueError, match='n_classes'): to_soft(torch.eye(3), 4)
