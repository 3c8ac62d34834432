"Grad-CAM (openmixup_nb.cam): the closed form on linear models, top-k maps, the model left as it was, clear errors."
import sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from torch import nn
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.cam import CAMs, cam_layer, grad_cam, show_cams
from openmixup_nb.models import create_model

from _helpers import _seed, _one_thread, warmed # autouse fixtures: seed 0 per test, one thread per module

def _gap_linear(C, n):
    "y = W GAP(x) + b, the input itself as the explained feature map"
    return nn.Sequential(nn.Identity(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(C, n))

def _conv_gap_linear(C, K, n):
    "y = W GAP(V x) + b with a 1x1 convolution V"
    return nn.Sequential(nn.Identity(), nn.Conv2d(C, K, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(K, n))

def _effective(m):
    "The linear map u (classes, C) from GAP(x) to the logits"
    W = m[-1].weight
    return (W @ m[1].weight[:, :, 0, 0] if isinstance(m[1], nn.Conv2d) else W).detach()

def _closed(m, x, classes):
    "Grad-CAM in closed form: ReLU(sum_k alpha_k x_k), alpha_k = u_{c,k} / HW"
    H, W = x.shape[-2:]
    alpha = _effective(m)[classes] / (H * W)
    return torch.relu((alpha[:, :, None, None] * x).sum(1))

@pytest.mark.parametrize('shape', [(5, 3, 4, 6), (2, 1, 7, 7), (3, 4, 1, 9), (1, 2, 3, 3)])
@pytest.mark.parametrize('build', ['gap', 'conv'])
def test_linear_model_equals_closed_form(shape, build):
    N, C, H, W = shape
    n = 5
    m = _gap_linear(C, n) if build == 'gap' else _conv_gap_linear(C, 4, n)
    x = torch.randn(shape, dtype=torch.float64); m = m.double()
    r = grad_cam(m, x, topk=3, target_layer=m[0], normalized=False, upsample=False)
    assert isinstance(r, CAMs) and r.maps.shape == (N, 3, H, W)
    assert torch.equal(r.classes, m(x).topk(3, dim=1).indices)
    for j in range(3):
        torch.testing.assert_close(r.maps[:, j].double(), _closed(m, x, r.classes[:, j]), rtol=1e-5, atol=1e-6)
    # normalised: the closed form min-max scaled per map
    rn = grad_cam(m, x, topk=3, target_layer='0', upsample=False)
    ref = torch.stack([_closed(m, x, r.classes[:, j]) for j in range(3)], 1)
    lo, hi = ref.amin((2, 3), keepdim=True), ref.amax((2, 3), keepdim=True)
    torch.testing.assert_close(rn.maps.double(), (ref - lo) / (hi - lo + 1e-8), rtol=1e-4, atol=1e-5)

def test_top2_differs_from_top1_and_probs_ordered():
    m = _conv_gap_linear(3, 6, 4)
    x = torch.randn(16, 3, 8, 8)
    r = grad_cam(m, x, target_layer=m[0], normalized=False, upsample=False)
    assert (r.classes[:, 0] != r.classes[:, 1]).all()
    assert ((r.maps[:, 0] - r.maps[:, 1]).abs().amax((1, 2)) > 1e-4).all()
    assert (r.probs[:, 0] >= r.probs[:, 1]).all()
    torch.testing.assert_close(r.probs, m(x).softmax(1).topk(2, dim=1).values)

def test_given_classes_are_explained():
    m = _gap_linear(3, 4)
    x = torch.randn(4, 3, 5, 5)
    cls = torch.tensor([[3, 0], [1, 1], [2, 3], [0, 2]])
    r = grad_cam(m, x, classes=cls, target_layer=m[0], normalized=False, upsample=False)
    assert torch.equal(r.classes, cls)
    for j in range(2): torch.testing.assert_close(r.maps[:, j], _closed(m, x, cls[:, j]).float(), rtol=1e-5, atol=1e-6)

def _hooks(m): return sum(len(l._forward_hooks) + len(l._backward_hooks) + len(getattr(l, '_forward_pre_hooks', {})) for l in m.modules())

def test_model_left_as_it_was():
    net = warmed(create_model('resnet18', num_classes=10, width=0.125)).train()
    net.stages[1].eval() # a mix of training flags must come back as it was
    flags = [l.training for l in net.modules()]
    state = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(4, 3, 32, 32)
    r = grad_cam(net, x)
    assert r.maps.shape == (4, 2, 32, 32) and 0 <= r.maps.min() and r.maps.max() <= 1
    assert [l.training for l in net.modules()] == flags
    assert all(p.grad is None for p in net.parameters()) and all(p.requires_grad for p in net.parameters())
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items()) # BN running stats untouched: eval mode
    assert _hooks(net) == 0
    assert not x.requires_grad

def test_hooks_removed_after_an_error():
    class Boom(nn.Module):
        def __init__(self): super().__init__(); self.body = nn.Conv2d(3, 4, 3); self.head = nn.Linear(4, 2)
        def forward(self, x): self.body(x); raise RuntimeError('boom')
    m = Boom().train()
    with pytest.raises(RuntimeError, match='boom'): grad_cam(m, torch.randn(2, 3, 8, 8))
    assert _hooks(m) == 0 and m.training

def test_default_layers():
    r18, pre, wrn = (create_model(n, width=0.125) for n in ('resnet18', 'preact_resnet18', 'wrn28_8'))
    assert cam_layer(r18) is r18.stages[-1] and cam_layer(pre) is pre.norm and cam_layer(wrn) is wrn.norm
    t = create_model('timm:resnet18', num_classes=10)
    assert cam_layer(t) is t.layer4
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(5, 3))
    assert cam_layer(plain) is plain[2]
    assert grad_cam(plain, torch.randn(2, 3, 10, 10), upsample=False).maps.shape == (2, 2, 6, 6)

def test_learner_and_frozen_model():
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader as FDL
    net = warmed(create_model('resnet18', num_classes=10, width=0.125))
    x = torch.randn(4, 3, 32, 32)
    ds = list(zip(x, torch.zeros(4, dtype=torch.long)))
    learn = Learner(DataLoaders(FDL(ds, bs=2), FDL(ds, bs=2)), net, loss_func=nn.CrossEntropyLoss())
    ref = grad_cam(net, x).maps
    torch.testing.assert_close(grad_cam(learn, x).maps, ref)
    for p in net.parameters(): p.requires_grad_(False)
    torch.testing.assert_close(grad_cam(net, x).maps, ref, rtol=1e-4, atol=1e-5)
    assert not any(p.requires_grad for p in net.parameters())

def test_bad_inputs():
    net = warmed(create_model('resnet18', num_classes=10, width=0.125))
    x = torch.randn(3, 3, 32, 32)
    cases = [((create_model('resnet18', num_classes=10, width=0.125), x), {}, ValueError, 'has never been trained'),
             ((net, x[0]), {}, ValueError, 'batch dimension'),
             ((net, torch.randn(3, 12)), {}, ValueError, r'\(N, C, H, W\)'),
             ((net, torch.randn(3, 3, 32, 32, 2)), {}, ValueError, r'\(N, C, H, W\)'),
             ((net, [[0.5]]), {}, TypeError, 'image batch tensor'),
             ((net, torch.zeros(3, 3, 32, 32, dtype=torch.uint8)), {}, TypeError, 'float'),
             ((net, x[:0]), {}, ValueError, 'no images'),
             ((net, x), dict(target_layer='layer4'), ValueError, "no layer named 'layer4'"),
             ((net, x), dict(target_layer=nn.Conv2d(3, 3, 1)), ValueError, 'not a module of'),
             ((net, x), dict(target_layer=3), TypeError, 'target_layer must be'),
             ((net, x), dict(target_layer=net.fc), ValueError, 'feature map'),
             ((net, x), dict(topk=0), ValueError, 'topk'),
             ((net, x), dict(topk=11), ValueError, 'topk'),
             ((net, x), dict(classes=torch.full((3, 1), -1)), ValueError, 'class indices'),
             ((nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 10)), x), {}, ValueError, 'pass `target_layer`'),
             (('resnet18', x), {}, TypeError, 'nn.Module')]
    for args, kw, err, msg in cases:
        with pytest.raises(err, match=msg): grad_cam(*args, **kw)
    unused = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    class Skips(nn.Module):
        def __init__(self): super().__init__(); self.a, self.b = unused, nn.Conv2d(3, 3, 1)
        def forward(self, x): return self.a(x)
    with pytest.raises(ValueError, match='not run'): grad_cam(Skips(), x, target_layer='b')
    assert _hooks(net) == 0

def test_show_cams_grid():
    import matplotlib; matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    a, b = warmed(create_model('resnet18', width=0.125)), warmed(create_model('preact_resnet18', width=0.125))
    x = torch.randn(2, 3, 32, 32)
    vocab = [f'c{i}' for i in range(10)]
    fig = show_cams({'a': a, 'b': b}, x, vocab=vocab, labels=torch.tensor([1, 2]), topk=2)
    assert len(fig.axes) == 2 * 5
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[0] == 'image\nc1' and titles[1].startswith('a top-1\nc') and titles[3].startswith('b top-1\n')
    plt.close(fig)
    with pytest.raises(TypeError, match='non-empty dict'): show_cams([a], x)
    with pytest.raises(ValueError, match='imgs'): show_cams({'a': a}, x, imgs=torch.rand(3, 3, 32, 32))
