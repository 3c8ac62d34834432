"Dense checks of `openmixup_nb.models`: parameter counts, every architecture x width, timm via `create_model`, stage hooks."
import sys, warnings
from pathlib import Path
import pytest
import torch
from torch import nn
from openmixup_nb.models import (CIFAR_MODELS, CIFARNet, ResNetCIFAR, WideResNet, create_model, stage_hook,
                                 stage_modules, stage_outputs)

# published parameter counts (millions) of the CIFAR variants with a 10-way head
PUBLISHED = {'resnet18': 11.17, 'resnet34': 21.28, 'resnet50': 23.52, 'resnext50_32x4d': 22.99,
             'preact_resnet18': 11.17, 'wrn28_8': 23.35, 'wrn28_10': 36.48}
EXACT = {'resnet18': 11_173_962, 'resnet34': 21_282_122, 'resnet50': 23_520_842, 'resnext50_32x4d': 22_992_714,
         'wrn28_10': 36_479_194}  # mmcls ResNet_CIFAR / torchvision-with-CIFAR-stem / WRN reference code

def n_params(m): return sum(p.numel() for p in m.parameters())
def n_hooks(m): return sum(len(s._forward_hooks) + len(s._forward_pre_hooks) for s in m.modules())

from _helpers import _seed, _one_thread # autouse fixtures: seed 0 per test, one thread per module

@pytest.mark.parametrize('name', list(PUBLISHED))
def test_param_counts(name):
    n = n_params(create_model(name, num_classes=10))
    assert abs(n/1e6 - PUBLISHED[name]) <= 0.01*PUBLISHED[name]
    if name in EXACT: assert n == EXACT[name]

def test_registry_is_published(): assert set(CIFAR_MODELS) == set(PUBLISHED)

# (name, expected stage channels at width 1, expected spatial sizes at 32x32)
STAGES = {'resnet18': ([64, 128, 256, 512], [32, 16, 8, 4]), 'resnet34': ([64, 128, 256, 512], [32, 16, 8, 4]),
          'resnet50': ([256, 512, 1024, 2048], [32, 16, 8, 4]),
          'resnext50_32x4d': ([256, 512, 1024, 2048], [32, 16, 8, 4]),
          'preact_resnet18': ([64, 128, 256, 512], [32, 16, 8, 4]),
          'wrn28_8': ([128, 256, 512], [32, 16, 8]), 'wrn28_10': ([160, 320, 640], [32, 16, 8])}

@pytest.mark.parametrize('width', [0.125, 0.25])
@pytest.mark.parametrize('name', list(CIFAR_MODELS))
def test_forward_backward(name, width):
    m = create_model(name, num_classes=5, width=width)
    assert isinstance(m, CIFARNet) and isinstance(m.stages, nn.ModuleList)
    x = torch.randn(3, 3, 32, 32)
    out = m(x)
    assert out.shape == (3, 5) and torch.isfinite(out).all()
    out.logsumexp(1).sum().backward()
    for n, p in m.named_parameters(): assert p.grad is not None and p.grad.abs().sum() > 0, n
    chans, sizes = STAGES[name]
    feats = m.eval().forward_stages(x)
    assert [f.shape[2] for f in feats] == sizes
    assert [f.shape[1] for f in feats] == [fi['num_chs'] for fi in m.feature_info]
    assert m.forward_features(x).shape[1] == m.num_features == feats[-1].shape[1]
    assert [fi['num_chs'] for fi in create_model(name, width=.5).feature_info] == [c//2 for c in chans]
    assert [fi['num_chs'] for fi in create_model(name).feature_info] == chans

@pytest.mark.parametrize('name', list(CIFAR_MODELS))
def test_shapes_and_inputs(name):
    m = create_model(name, num_classes=7, width=.25, in_chans=1).eval()
    with torch.no_grad():
        for shape in [(1, 1, 32, 32), (5, 1, 32, 32), (2, 1, 32, 40), (2, 1, 24, 24)]:
            assert m(torch.randn(shape)).shape == (shape[0], 7)
    m = create_model(name, num_classes=0, width=.25)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, m.num_features)
    m.reset_classifier(3)
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 3)

def test_resnext_groups_valid():
    for w in (1., .5, .25, .1):
        m = create_model('resnext50_32x4d', width=w)
        for c in m.modules():
            if isinstance(c, nn.Conv2d) and c.groups > 1: assert c.groups == 32 and c.in_channels % 32 == 0
    assert create_model('resnext50_32x4d').stages[0][0].conv2.out_channels == 128

@pytest.mark.parametrize('name', ['resnet18', 'resnet50', 'preact_resnet18', 'wrn28_8'])
def test_width_scaling_quadratic(name):
    full, half = n_params(create_model(name)), n_params(create_model(name, width=.5))
    assert abs(half/full - .25) < .03

def test_init_and_zero_init_last():
    m = create_model('resnet18', width=.25)
    bns = [b for b in m.modules() if isinstance(b, nn.BatchNorm2d)]
    assert all((b.weight == 1).all() and (b.bias == 0).all() for b in bns)
    z = create_model('resnet50', width=.25, zero_init_last=True)
    assert all((blk.bn3.weight == 0).all() for s in z.stages for blk in s)
    p = create_model('preact_resnet18', width=.25, zero_init_last=True).eval()
    x = torch.randn(2, p.stem.out_channels, 8, 8)
    blk = p.stages[0][1]  # identity shortcut: block is the identity at init
    with torch.no_grad(): assert torch.equal(blk(x), x)

def test_wrn_dropout_and_depth():
    m = create_model('wrn28_8', width=.25, dropout=.3)
    assert all(blk.drop.p == .3 for s in m.stages for blk in s)
    with pytest.raises(ValueError, match='6n\\+4'): WideResNet(depth=30)
    assert sum(len(s) for s in WideResNet(depth=16, widen_factor=2).stages) == 6

def test_create_model_names():
    with pytest.raises(ValueError, match='timm:resnet18x') as e: create_model('resnet18x')
    for n in CIFAR_MODELS: assert n in str(e.value)
    assert 'timm.list_models' in str(e.value)
    with pytest.raises(ValueError, match='width'): create_model('timm:resnet18', width=.5)
    assert isinstance(create_model('resnet18', width=.25), ResNetCIFAR)

@pytest.mark.parametrize('name,kw,n_stages,first', [
    ('resnet18', {}, 4, 'layer1'), ('resnext50_32x4d', {}, 4, 'layer1'), ('convnext_atto', {}, 4, 'stages.0'),
    ('efficientnet_b0', {}, 5, 'blocks.0'), ('regnety_002', {}, 4, 's1'),
    ('deit_tiny_patch16_224', dict(img_size=32, patch_size=4), 12, 'blocks.0'),
    ('swin_tiny_patch4_window7_224', dict(img_size=32, patch_size=2, window_size=4), 4, 'layers.0')])
def test_timm_models(name, kw, n_stages, first):
    m = create_model(f'timm:{name}', num_classes=10, in_chans=1, **kw)
    names = {id(s): n for n, s in m.named_modules()}
    mods = stage_modules(m)
    assert len(mods) == n_stages and names[id(mods[0])] == first
    x = torch.randn(2, 1, 32, 32)
    out = m(x)
    assert out.shape == (2, 10)
    outs = stage_outputs(m.eval(), x)
    assert len(outs) == n_stages and all(o.shape[0] == 2 for o in outs)
    assert n_hooks(m) == 0

def test_timm_not_pretrained_by_default():
    a, b = create_model('timm:resnet18'), create_model('timm:resnet18')
    assert not torch.equal(a.fc.weight, b.fc.weight)  # two random inits, nothing downloaded

def test_stage_outputs_match_forward_stages():
    m = create_model('wrn28_8', width=.25).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        ref = m.forward_stages(x)
        assert all(torch.equal(a, b) for a, b in zip(stage_outputs(m, x), ref))
        sel = stage_outputs(m, x, idxs=[-1, 0])
        assert torch.equal(sel[0], ref[2]) and torch.equal(sel[1], ref[0])
        assert len(m.forward_stages(x, n=2)) == 2
    with pytest.raises(IndexError): stage_outputs(m, x, idxs=[3])
    assert n_hooks(m) == 0

def test_stage_outputs_stops_early():
    m = create_model('resnet18', width=.25).eval()
    calls = []
    h = m.stages[3].register_forward_pre_hook(lambda mod, inp: calls.append(1))
    stage_outputs(m, torch.randn(2, 3, 32, 32), idxs=[1])
    assert calls == []
    stage_outputs(m, torch.randn(2, 3, 32, 32), idxs=[1], stop_early=False)
    assert calls == [1]
    h.remove()

def test_hooks_removed_on_exception():
    m = create_model('resnet18', width=.25)
    h = m.fc.register_forward_hook(lambda *a: 1/0)
    with pytest.raises(ZeroDivisionError): stage_outputs(m, torch.randn(2, 3, 32, 32))
    h.remove(); assert n_hooks(m) == 0
    with pytest.raises(ZeroDivisionError):
        with stage_hook(m, 1, lambda o: 1/0): m(torch.randn(2, 3, 32, 32))
    assert n_hooks(m) == 0

def test_stage_hook_mixes_in_graph():
    m = create_model('preact_resnet18', width=.25).eval()
    x, perm, lam = torch.randn(4, 3, 32, 32), torch.tensor([3, 2, 1, 0]), .3
    with stage_hook(m, 1, lambda h: lam*h + (1-lam)*h[perm]): out = m(x)
    h = m.forward_stages(x, n=2)[1]
    h = lam*h + (1-lam)*h[perm]
    ref = m.forward_head(m.norm(m.stages[3](m.stages[2](h))))
    torch.testing.assert_close(out, ref)
    out.sum().backward()
    assert m.stem.weight.grad is not None
    with stage_hook(m, 0, lambda h: None): same = m(x)  # returning None keeps the output
    torch.testing.assert_close(same, m(x))

def test_dataparallel_unwrap():
    m = create_model('resnet18', width=.25)
    assert stage_modules(nn.DataParallel(m))[0] is m.stages[0]

@pytest.mark.parametrize('dtype', [torch.bfloat16, torch.float16])
@pytest.mark.parametrize('name', ['resnet18', 'resnext50_32x4d', 'wrn28_8', 'preact_resnet18'])
def test_cpu_autocast(name, dtype):
    m = create_model(name, width=.125)
    x = torch.randn(3, 3, 16, 16)
    with torch.autocast('cpu', dtype=dtype):
        out = m(x)
        outs = stage_outputs(m, x)
    assert out.dtype == dtype and torch.isfinite(out).all() and all(torch.isfinite(o).all() for o in outs)
    out.float().sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)

def test_fastai_learner():
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.callback.fp16 import MixedPrecision  # noqa: F401  (patches to_fp16/to_bf16)
    from fastai.losses import CrossEntropyLossFlat
    from torch.utils.data import TensorDataset
    ds = TensorDataset(torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,)))
    dls = DataLoaders.from_dsets(ds, ds, bs=8)
    learn = Learner(dls, create_model('resnet18', width=.125), loss_func=CrossEntropyLossFlat()).to_fp16()
    with warnings.catch_warnings(), learn.no_bar(), learn.no_logging():
        warnings.simplefilter('ignore')
        learn.fit(1, 1e-2)
        preds, _ = learn.get_preds(dl=dls.valid)
    assert preds.shape == (16, 10) and torch.isfinite(preds).all()
