"Feature taps for learnable mixing (`mask_layer_default`, `feature_channels`, `feature_map`) on every supported family."
import math, warnings
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st
from openmixup_nb.models import (CIFAR_MODELS, create_model, feature_channels, feature_map, mask_layer_default,
                                 stage_modules)

FAST = settings(max_examples=15, deadline=None)
warnings.filterwarnings('ignore', category=FutureWarning)

from _helpers import _seed, _one_thread # autouse fixtures: seed 0 per test, one thread per module

def n_hooks(m): return sum(len(s._forward_hooks) + len(s._forward_pre_hooks) for s in m.modules())

# small timm models (built for small inputs where the model fixes its input size)
VITS = {  # name -> (create_model kwargs, input (H, W), expected prefix tokens)
    'deit_tiny':      (dict(img_size=32, patch_size=4), (32, 32), 1),
    'deit_distilled': (dict(img_size=(32, 48), patch_size=8), (32, 48), 2),
    'vit_reg4':       (dict(img_size=32, patch_size=8, reg_tokens=4), (32, 32), 5),
    'vit_no_cls':     (dict(img_size=32, patch_size=8, class_token=False, global_pool='avg'), (32, 32), 0),
    'vit_dynamic':    (dict(patch_size=8, dynamic_img_size=True), (40, 24), 1),
}
VIT_BASE = {'deit_distilled': 'timm:deit_tiny_distilled_patch16_224'}

def make_vit(key):
    kw, hw, _ = VITS[key]
    return create_model(VIT_BASE.get(key, 'timm:deit_tiny_patch16_224'), **kw).eval(), hw

_cache = {}
def timm_model(name):
    "timm CNNs are slow to build (ResNet-50 init): build once, share (the tests leave them in eval mode, hook-free)."
    if name not in _cache: _cache[name] = create_model(f'timm:{name}').eval()
    return _cache[name]

# ---- defaults (reference §27.1) ----

@pytest.mark.parametrize('name,layer', [('resnet18', 2), ('resnet34', 2), ('resnet50', 2), ('resnext50_32x4d', 2),
                                        ('preact_resnet18', 2), ('wrn28_8', 1), ('wrn28_10', 1)])
def test_default_layer_ours(name, layer):
    assert mask_layer_default(create_model(name, width=.125)) == layer

def test_default_layer_timm():
    for name in ('resnet18', 'resnet50', 'convnext_atto'): assert mask_layer_default(timm_model(name)) == 2
    for key in VITS: assert mask_layer_default(make_vit(key)[0]) == 5          # block 6 of 12
    assert mask_layer_default(create_model('timm:deit_tiny_patch16_224', img_size=32, patch_size=8, depth=4)) == 1

def test_reference_shapes_cifar():
    "R-18 CIFAR stage 3: 256x8x8; WRN-28-8 stage 2: 256x16x16 (full width, 32x32)."
    x = torch.randn(1, 3, 32, 32)
    for name, shape in [('resnet18', (256, 8, 8)), ('wrn28_8', (256, 16, 16))]:
        m = create_model(name).eval()
        assert feature_channels(m) == shape[0]
        with torch.no_grad(): assert feature_map(m, x).shape == (1, *shape)

def test_reference_shapes_imagenet():
    "ResNet-50 stage 3: 1024x14x14; DeiT-S block 6: 384x14x14 (224x224)."
    x = torch.randn(1, 3, 224, 224)
    for m, shape in [(timm_model('resnet50'), (1024, 14, 14)),
                     (create_model('timm:deit_small_patch16_224').eval(), (384, 14, 14))]:
        assert feature_channels(m) == shape[0]
        with torch.no_grad(): assert feature_map(m, x).shape == (1, *shape)

# ---- channels agree with maps, every stage, every family ----

@pytest.mark.parametrize('name', list(CIFAR_MODELS))
def test_channels_agree_ours(name):
    m = create_model(name, width=.125).eval()
    x = torch.randn(2, 3, 32, 32)
    n = len(stage_modules(m))
    with torch.no_grad():
        for i in range(-n, n):
            f = feature_map(m, x, i)
            assert f.shape == (2, feature_channels(m, i), 32 >> (i % n), 32 >> (i % n))
    with torch.device('meta'): full = create_model(name)   # width 1: metadata only, no weights, no forward
    assert feature_channels(full) == full.feature_info[mask_layer_default(m)]['num_chs'] == 8*feature_channels(m)

@pytest.mark.parametrize('name', ['resnet18', 'resnet50', 'convnext_atto'])
def test_channels_agree_timm_cnn(name):
    m = timm_model(name)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        for i in range(4):
            f = feature_map(m, x, i)
            assert f.shape == (2, feature_channels(m, i), 64 // 2**(i+2), 64 // 2**(i+2))

@pytest.mark.parametrize('key', list(VITS))
def test_channels_agree_vit(key):
    m, (H, W) = make_vit(key)
    p = m.patch_embed.patch_size
    assert m.num_prefix_tokens == VITS[key][2]
    with torch.no_grad(): f = feature_map(m, torch.randn(2, 3, H, W), layer=3)
    assert f.shape == (2, feature_channels(m, 3), H // p[0], W // p[1])
    assert feature_channels(m) == m.embed_dim == 192

# ---- equality with a manual run ----

def test_manual_ours():
    for name in ('resnet18', 'preact_resnet18', 'wrn28_8'):
        m = create_model(name, width=.125).eval()
        x = torch.randn(3, 3, 32, 40)
        with torch.no_grad():
            h = m.stem(x)
            for s in m.stages[:mask_layer_default(m) + 1]: h = s(h)
            assert torch.equal(feature_map(m, x), h)

def test_manual_timm_cnn():
    x = torch.randn(2, 3, 64, 48)
    r = timm_model('resnet18')
    c = timm_model('convnext_atto')
    with torch.no_grad():
        h = r.maxpool(r.act1(r.bn1(r.conv1(x))))
        assert torch.equal(feature_map(r, x), r.layer3(r.layer2(r.layer1(h))))
        assert torch.equal(feature_map(c, x, 1), c.stages[1](c.stages[0](c.stem(x))))

@pytest.mark.parametrize('key', list(VITS))
def test_manual_vit(key):
    "Patch tokens of the block output, reshaped by hand, and timm's own `forward_intermediates` (NCHW)."
    m, (H, W) = make_vit(key)
    x = torch.randn(2, 3, H, W)
    i, p = mask_layer_default(m), m.num_prefix_tokens
    gh, gw = H // m.patch_embed.patch_size[0], W // m.patch_embed.patch_size[1]
    with torch.no_grad():
        f = feature_map(m, x)
        t = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        for b in m.blocks[:i + 1]: t = b(t)
        assert t.shape[1] == p + gh*gw
        torch.testing.assert_close(f, t[:, p:].transpose(1, 2).reshape(2, m.embed_dim, gh, gw), rtol=0, atol=1e-6)
        ref, = m.forward_intermediates(x, indices=[i], norm=False, output_fmt='NCHW', intermediates_only=True)
        torch.testing.assert_close(f, ref, rtol=0, atol=1e-6)
    assert f.is_contiguous()

def test_vit_token_order():
    "Row-major patch grid: a map that only depends on the patch (no attention) locates each patch where it was."
    m, (H, W) = make_vit('deit_distilled')
    class NoMix(nn.Module):
        def forward(self, x, **kwargs): return x
    for b in m.blocks[:mask_layer_default(m) + 1]: b.attn = NoMix()   # tokens never mix
    x = torch.zeros(1, 3, H, W); x[..., 8:16, 40:48] = 5.  # patch at grid row 1, column 5 (4x6 grid)
    with torch.no_grad():
        f = feature_map(m, x)
        base = feature_map(m, torch.zeros_like(x))
    changed = (f - base).abs().sum(1)[0] > 1e-4
    assert changed.nonzero().tolist() == [[1, 5]]

# ---- the forward stops early, gradients, hooks ----

def _last_fires(m, last, x, layer=None):
    calls = []
    h = last.register_forward_hook(lambda *a: calls.append(1))
    try: feature_map(m, x, layer)
    finally: h.remove()
    return len(calls)

def test_stops_early():
    x = torch.randn(2, 3, 32, 32)
    ours = create_model('resnet18', width=.125).eval()
    wrn = create_model('wrn28_8', width=.125).eval()
    with torch.no_grad():
        assert _last_fires(ours, ours.stages[3], x) == 0 and _last_fires(ours, ours.fc, x) == 0
        assert _last_fires(ours, ours.stages[2], x) == 1
        assert _last_fires(wrn, wrn.stages[2], x) == 0
        assert _last_fires(ours, ours.fc, x, -1) == 0   # even the last stage: no pooling, no head
        r = timm_model('resnet18'); c = timm_model('convnext_atto')
        assert _last_fires(r, r.layer4, x) == 0 and _last_fires(c, c.stages[3], x) == 0
        vit, (H, W) = make_vit('deit_distilled')
        xv = torch.randn(2, 3, H, W)
        assert _last_fires(vit, vit.blocks[6], xv) == 0 and _last_fires(vit, vit.head, xv) == 0
        assert _last_fires(vit, vit.blocks[5], xv) == 1
    for m in (ours, wrn, r, c, vit): assert n_hooks(m) == 0

def test_gradients_flow_to_x():
    for m, shape in [(create_model('resnet18', width=.125), (2, 3, 32, 32)),
                     (timm_model('convnext_atto'), (2, 3, 32, 32)),
                     (make_vit('deit_distilled')[0], (2, 3, 32, 48))]:
        x = torch.randn(shape, requires_grad=True)
        f = feature_map(m, x)
        assert f.requires_grad
        f.square().mean().backward()
        assert x.grad is not None and x.grad.abs().sum() > 0
        with torch.no_grad(): assert feature_map(m, x).grad_fn is None   # the caller decides
        m.zero_grad(set_to_none=True)

def test_train_mode_kept():
    m = create_model('resnet18', width=.125).train()
    bn = m.stages[0][0].bn1
    before = bn.running_mean.clone()
    feature_map(m, torch.randn(4, 3, 32, 32))
    assert m.training and not torch.equal(bn.running_mean, before)   # EMA encoder in train mode updates its BN stats

def test_autocast_bf16():
    m = create_model('resnet18', width=.125).eval()
    with torch.no_grad(), torch.autocast('cpu', dtype=torch.bfloat16): f = feature_map(m, torch.randn(2, 3, 32, 32))
    assert f.dtype == torch.bfloat16 and f.shape == (2, feature_channels(m), 8, 8)

def test_wrapped_model():
    m = create_model('resnet18', width=.125).eval()
    dp = nn.DataParallel(m)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad(): assert torch.equal(feature_map(dp, x), feature_map(m, x))
    assert feature_channels(dp) == feature_channels(m) and mask_layer_default(dp) == 2

def test_channels_without_forward():
    class NoForward(Exception): pass
    def boom(*a): raise NoForward
    for m in (create_model('wrn28_8', width=.125), timm_model('convnext_atto'), make_vit('vit_reg4')[0]):
        h = m.register_forward_pre_hook(boom)
        try:
            for i in range(len(stage_modules(m))): feature_channels(m, i)
            mask_layer_default(m)
            with pytest.raises(NoForward): feature_map(m, torch.randn(1, 3, 32, 32))
        finally: h.remove()

# ---- odd, non-square and random input sizes ----

@FAST
@given(n=st.integers(1, 3), H=st.integers(9, 40), W=st.integers(9, 40), layer=st.integers(0, 3))
def test_sizes_ours(n, H, W, layer):
    m = _cache.setdefault('ours', create_model('resnet18', width=.125).eval())
    with torch.no_grad(): f = feature_map(m, torch.randn(n, 3, H, W), layer)
    h, w = H, W
    for _ in range(layer): h, w = math.ceil(h/2), math.ceil(w/2)   # stride-2 3x3 convs with padding 1
    assert f.shape == (n, feature_channels(m, layer), h, w)

@FAST
@given(H=st.integers(8, 40), W=st.integers(8, 40))
def test_sizes_vit_dynamic_pad(H, W):
    key = 'vit_pad'
    if key not in _cache:
        _cache[key] = create_model('timm:deit_tiny_patch16_224', patch_size=8, dynamic_img_size=True,
                                   dynamic_img_pad=True, depth=2).eval()
    m = _cache[key]
    with torch.no_grad(): f = feature_map(m, torch.randn(1, 3, H, W))
    assert f.shape == (1, 192, math.ceil(H/8), math.ceil(W/8))

def test_odd_timm_cnn():
    m = timm_model('resnet18')
    with torch.no_grad(): f = feature_map(m, torch.randn(1, 3, 33, 80))
    assert f.shape == (1, feature_channels(m), 3, 5)   # 33x80 -> stem 17x40 -> pool 9x20 -> 5x10 -> 3x5

# ---- errors ----

@pytest.mark.parametrize('layer', [4, -5, 100, 1.0, True, '2'])
def test_bad_layer(layer):
    m = create_model('resnet18', width=.125)
    with pytest.raises(ValueError, match='layer'): feature_map(m, torch.randn(1, 3, 32, 32), layer)
    with pytest.raises(ValueError, match='layer'): feature_channels(m, layer)
    assert n_hooks(m) == 0

def test_bad_layer_vit_and_wrn():
    vit, _ = make_vit('deit_tiny')
    with pytest.raises(ValueError, match='layer'): feature_channels(vit, 12)
    with pytest.raises(ValueError, match='layer'): feature_map(vit, torch.randn(1, 3, 32, 32), -13)
    with pytest.raises(ValueError, match='layer'): feature_channels(create_model('wrn28_8', width=.125), 3)

def test_bad_input():
    m = create_model('resnet18', width=.125)
    with pytest.raises(ValueError, match='x'): feature_map(m, torch.randn(3, 32, 32))
    vit, _ = make_vit('deit_tiny')
    with pytest.raises(ValueError, match='dynamic_img_size'): feature_map(vit, torch.randn(1, 3, 64, 64))

def test_unsupported_models():
    swin = create_model('timm:swin_tiny_patch4_window7_224', embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 1, 1))
    for f in (mask_layer_default, feature_channels, lambda m: feature_map(m, torch.randn(1, 3, 224, 224))):
        with pytest.raises(ValueError, match='SwinTransformer.*NHWC.*Supported'): f(swin)
    for m in (nn.Sequential(nn.Conv2d(3, 8, 3)), create_model('timm:mobilenetv3_small_050')):
        with pytest.raises(ValueError, match=f'{type(m).__name__}.*Supported'): feature_channels(m)
        with pytest.raises(ValueError, match='Supported'): feature_map(m, torch.randn(1, 3, 32, 32))
