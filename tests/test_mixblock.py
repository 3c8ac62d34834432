"Property tests of the AutoMix / SAMix MixBlock (against an independent per-sample re-implementation), lam_rescale and mask_loss."
import sys
import math
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, assume, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.mixblock import PixelMixBlock, mask_loss, lam_rescale

FAST = settings(max_examples=25, deadline=None)
CONFIGS = {
    'automix': lambda c: PixelMixBlock.automix(c),
    'automix_imagenet': lambda c: PixelMixBlock.automix(c, imagenet=True),
    'samix': lambda c: PixelMixBlock.samix(c),
    'samix_imagenet': lambda c: PixelMixBlock.samix(c, imagenet=True),
}
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

from _helpers import _seed, _one_thread # autouse fixtures: seed 0 per test, one thread per module

def _randomise(blk, std=0.7):
    "Weights large enough for a structured mask (the paper init gives masks ≈ ½), random BN running stats"
    with torch.no_grad():
        for p in blk.parameters(): p.normal_(0, std)
        for m in blk.modules():
            if isinstance(m, torch.nn.BatchNorm2d): m.running_mean.normal_(0, 0.5); m.running_var.uniform_(0.5, 2)
    return blk

def _feat(n, c, h, w, dtype=torch.float32): return torch.randn(n, c, h, w).relu().to(dtype)

# ---------------------------------------------------------------------------------------------------------------
# An independent reading of the spec (reference §27.2), per sample, float64, explicit sums over positions.
def _f(lam, k): return lam if k < 0 else (4/3 * lam**3 - 2 * lam**2 + (k + 1) * lam) / ((k + 1) - 2/3)

def _conv1x1(conv, x):
    "x (C, P) -> (C_out, P) with the conv's weights"
    y = conv.weight.double()[:, :, 0, 0] @ x
    return y if conv.bias is None else y + conv.bias.double()[:, None]

def spec_mask(blk, feat, lam, index, size):
    "First image's weight per the spec; the block must be in eval mode (BN running stats, no dropout)"
    n, c, h, w = feat.shape
    lams = [float(lam)] * n if not torch.is_tensor(lam) or lam.numel() == 1 else [float(l) for l in lam]
    out = []
    for a in range(n):
        Fa = feat[a].double().reshape(c, h * w)          # first image, (C, P)
        Fb = feat[int(index[a])].double().reshape(c, h * w)  # its partner
        lam_a = lams[a]
        if blk.lam_mul_k is not None:
            lr = _f(lam_a, blk.lam_mul_k[0])
            Fa, Fb = (Fa * (1 + lr), Fb * (1 + (1 - lr))) if blk.lam_residual else (Fa * lr, Fb * (1 - lr))
        if blk.lam_concat:
            Fa = torch.cat([Fa, torch.full((1, h * w), lam_a, dtype=torch.float64)])
            Fb = torch.cat([Fb, torch.full((1, h * w), 1 - lam_a, dtype=torch.float64)])
        # value of every partner position
        if isinstance(blk.value[1], torch.nn.BatchNorm2d):
            c1, bn, c2 = blk.value[0], blk.value[1], blk.value[3]
            t = _conv1x1(c1, Fb)
            t = (t - bn.running_mean.double()[:, None]) / torch.sqrt(bn.running_var.double()[:, None] + bn.eps)
            t = t * bn.weight.double()[:, None] + bn.bias.double()[:, None]
            t = torch.where(t > 0, t, torch.expm1(t))          # ELU
            v = _conv1x1(c2, t)[0]
        else: v = _conv1x1(blk.value[0], Fb)[0]
        if blk.key is None: q, k = _conv1x1(blk.query, Fa), _conv1x1(blk.query, Fb)
        else:
            Z = torch.cat([Fa, Fb])
            q, k = _conv1x1(blk.query, Z), _conv1x1(blk.key, Z)
        cr = q.shape[0]
        m = torch.empty(h * w, dtype=torch.float64)
        for p in range(h * w):                               # position p of the first image attends to all partner positions
            logits = (q[:, p:p+1] * k).sum(0) / math.sqrt(cr)
            e = torch.exp(logits - logits.max())
            m[p] = (e * v).sum() / e.sum()
        out.append(m.reshape(1, 1, h, w))
    m = torch.cat(out)
    mode = blk.upsample[0]
    m = F.interpolate(m, size=size, mode=mode, **({} if mode == 'nearest' else dict(align_corners=False)))
    return 1 / (1 + torch.exp(m))                            # σ(-m): the partner map counts against the first image

@FAST
@given(cfg=st.sampled_from(list(CONFIGS)), n=st.integers(1, 3), h=st.integers(1, 4), w=st.integers(1, 4),
       H=st.integers(1, 13), W=st.integers(1, 13), lam=st.floats(0, 1), per_sample=st.booleans(), seed=st.integers(0, 99))
def test_matches_spec(cfg, n, h, w, H, W, lam, per_sample, seed):
    torch.manual_seed(seed)
    blk = _randomise(CONFIGS[cfg](6)).eval()
    feat, index = _feat(n, 6, h, w), torch.randperm(n)
    lam = torch.rand(n) if per_sample else lam
    with torch.no_grad(): got = blk(feat, lam, index, (H, W))
    torch.testing.assert_close(got.double(), spec_mask(blk, feat, lam, index, (H, W)), atol=2e-6, rtol=1e-5)

@pytest.mark.parametrize('cfg', list(CONFIGS))
@pytest.mark.parametrize('lam', [0.2, 0.9, 'per-sample'])
def test_matches_spec_fixed(cfg, lam):
    "The same comparison on fixed cases (hypothesis draws vary from run to run)"
    blk = _randomise(CONFIGS[cfg](8)).eval()
    feat, index = _feat(3, 8, 3, 4), torch.tensor([2, 0, 1])
    lam = torch.tensor([0.1, 0.5, 0.8]) if lam == 'per-sample' else lam
    with torch.no_grad(): got = blk(feat, lam, index, (7, 10))
    torch.testing.assert_close(got.double(), spec_mask(blk, feat, lam, index, (7, 10)), atol=2e-6, rtol=1e-5)

@pytest.mark.parametrize('cfg', list(CONFIGS))
def test_spec_is_not_trivial(cfg):
    "The spec comparison is sensitive: with the random weights of the tests the masks vary in space and across images"
    blk = _randomise(CONFIGS[cfg](6)).eval()
    m = spec_mask(blk, _feat(3, 6, 4, 4), 0.3, torch.tensor([1, 2, 0]), (8, 8))
    assert m.std() > 0.03 and (m.amax((1, 2, 3)) - m.amin((1, 2, 3))).min() > 0.01

# ---------------------------------------------------------------------------------------------------------------
@FAST
@given(cfg=st.sampled_from(list(CONFIGS)), dtype=st.sampled_from(FLOATS), n=st.integers(1, 2), h=st.integers(1, 5),
       w=st.integers(1, 5), H=st.integers(1, 40), W=st.integers(1, 40), lam=st.floats(0, 1), identity=st.booleans())
def test_mask_shape_dtype_range(cfg, dtype, n, h, w, H, W, lam, identity):
    blk = CONFIGS[cfg](16)
    assume(n * h * w > 1 or blk.value[1].__class__ is not torch.nn.BatchNorm2d)   # BN in train mode needs 2 values
    index = torch.arange(n) if identity else torch.randperm(n)
    mask = blk(_feat(n, 16, h, w, dtype), lam, index, (H, W))
    assert mask.shape == (n, 1, H, W) and mask.dtype == torch.float32
    assert ((mask > 0) & (mask < 1)).all()
    assert torch.equal(mask + (1 - mask), torch.ones_like(mask))   # first + partner weight: exactly 1

@pytest.mark.parametrize('cfg', list(CONFIGS))
def test_autocast_and_low_precision(cfg):
    blk = _randomise(CONFIGS[cfg](32), 0.05).eval()
    feat, index = _feat(4, 32, 5, 3), torch.tensor([3, 2, 1, 0])
    ref = blk(feat, 0.4, index, (19, 11))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        got = blk(feat, 0.4, index, (19, 11))
        got16 = blk(feat.bfloat16(), 0.4, index, (19, 11))
    assert got.dtype == got16.dtype == torch.float32
    assert torch.equal(got, ref)                                    # autocast is off inside the block
    assert got16.isfinite().all()
    torch.testing.assert_close(got16, ref, atol=0.05, rtol=0)        # bf16 features: inputs rounded, math in fp32
    torch.testing.assert_close(blk(feat.half(), 0.4, index, (19, 11)), ref, atol=5e-3, rtol=0)

def test_large_features_fp16_no_overflow():
    "fp16 features whose attention logits overflow fp16 (> 65504) still give a finite mask"
    blk = _randomise(PixelMixBlock.automix(64), 1.).eval()
    feat = (_feat(2, 64, 4, 4) * 30).half()
    with torch.no_grad():
        q = blk.query(feat.float())
        assert (q.flatten(2).transpose(1, 2) @ q.flatten(2)).abs().max() > 65504
        assert blk(feat, 0.5, torch.tensor([1, 0]), (8, 8)).isfinite().all()

# ---------------------------------------------------------------------------------------------------------------
def _grads(blk, cfg_feat=None, **kw):
    feat, index = cfg_feat if cfg_feat is not None else (_feat(4, 16, 4, 4), torch.tensor([1, 2, 3, 0]))
    blk.zero_grad(set_to_none=True)
    mask = blk(feat, 0.3, index, (16, 16), **kw)
    return mask

@pytest.mark.parametrize('cfg', list(CONFIGS))
def test_gradients_reach_generator(cfg):
    blk = CONFIGS[cfg](16)
    mask = _grads(blk)
    (mask * torch.randn_like(mask)).sum().backward()
    g = {n: p.grad.abs().max().item() for n, p in blk.named_parameters()}
    dead = sorted(n for n, v in g.items() if v < 1e-6)
    # a separate key conv's bias shifts whole rows of logits: the softmax cancels it (as in OpenMixup)
    assert dead == (['key.bias'] if blk.key is not None else []), g
    assert all(v > 1e-5 for n, v in g.items() if n != 'key.bias'), g
    for name in ('query.weight', 'value.0.weight') + (('key.weight',) if blk.key is not None else ()):
        assert g[name] > 1e-5

@pytest.mark.parametrize('cfg', list(CONFIGS))
def test_detached_mask_sends_nothing(cfg):
    blk = CONFIGS[cfg](16)
    feat = _feat(4, 16, 4, 4).requires_grad_()
    mask = blk(feat, 0.3, torch.tensor([1, 2, 3, 0]), (16, 16)).detach()
    assert not mask.requires_grad
    with torch.no_grad(): m2 = blk(feat, 0.3, torch.tensor([1, 2, 3, 0]), (16, 16))
    assert not m2.requires_grad
    assert all(p.grad is None for p in blk.parameters()) and feat.grad is None

def test_gradient_reaches_features_of_both_images():
    "The mask of sample a depends on F_a (queries) and on F_{π(a)} (keys and values)"
    blk = _randomise(PixelMixBlock.automix(8)).eval()
    feat = _feat(3, 8, 3, 3).requires_grad_()
    mask = blk(feat, 0.5, torch.tensor([1, 2, 0]), (6, 6))
    mask[0].sum().backward()
    per_sample = feat.grad.abs().sum((1, 2, 3))
    assert per_sample[0] > 0 and per_sample[1] > 0 and per_sample[2] == 0

def test_uniform_attention_uses_partner_value():
    "With zero queries the attention is uniform: m = mean of the partner's value map, mask = σ(-m)"
    blk = _randomise(PixelMixBlock.automix(8)).eval()
    with torch.no_grad(): blk.query.weight.zero_(); blk.query.bias.zero_()
    feat, index = _feat(3, 8, 4, 4), torch.tensor([2, 0, 1])
    with torch.no_grad():
        v = blk.value[0](feat).mean((1, 2, 3))
        torch.testing.assert_close(blk(feat, 0.5, index, (4, 4))[:, 0, 0, 0], torch.sigmoid(-v[index]))

# ---------------------------------------------------------------------------------------------------------------
def test_lambda_injection():
    feat, index = _feat(4, 16, 4, 4), torch.tensor([1, 2, 3, 0])
    with torch.no_grad():
        am = PixelMixBlock.automix(16)
        assert torch.equal(am(feat, 0.05, index, (8, 8)), am(feat, 0.95, index, (8, 8)))   # AutoMix CIFAR: no λ input
        for blk in (PixelMixBlock.automix(16, True), PixelMixBlock.samix(16), PixelMixBlock.samix(16, True)):
            blk = _randomise(blk).eval()
            a, b = blk(feat, 0.05, index, (8, 8)), blk(feat, 0.95, index, (8, 8))
            assert (a - b).abs().max() > 1e-3
    # the SAMix CIFAR block rescales λ with k = 0.25: λ=0.1 acts as λ'=f(0.1) fed to the plain residual form
    s, plain = _randomise(PixelMixBlock.samix(16)).eval(), PixelMixBlock(16, lam_mul_k=-1, qk_concat=True, value='neck',
                                                                          upsample='bilinear').eval()
    plain.load_state_dict(s.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(s(feat, 0.1, index, (8, 8)), plain(feat, lam_rescale(0.1, 0.25), index, (8, 8)))

def test_per_sample_lambda_and_tensor_lambda():
    feat, index = _feat(4, 16, 3, 3), torch.tensor([1, 2, 3, 0])
    for blk in (PixelMixBlock.automix(16, True), PixelMixBlock.samix(16)):
        blk = _randomise(blk).eval()
        lam = torch.tensor([0., 0.3, 0.7, 1.])
        with torch.no_grad():
            got = blk(feat, lam, index, (5, 5))
            want = torch.cat([blk(feat, float(l), index, (5, 5))[i:i+1] for i, l in enumerate(lam)])
            torch.testing.assert_close(got, want)
            torch.testing.assert_close(blk(feat, torch.tensor([0.3]), index, (5, 5)), blk(feat, 0.3, index, (5, 5)))

def test_random_upsampling_and_k_lists():
    blk = _randomise(PixelMixBlock(8, upsample=['nearest', 'bilinear'], lam_mul_k=[0.25, -1])).eval()
    feat, index = _feat(2, 8, 3, 3), torch.tensor([1, 0])
    torch.manual_seed(1)
    with torch.no_grad(): outs = {blk(feat, 0.1, index, (9, 9)).sum().item() for _ in range(30)}
    assert len(outs) == 4                                           # 2 modes x 2 values of k
    torch.manual_seed(3); a = blk(feat, 0.1, index, (9, 9))
    torch.manual_seed(3); b = blk(feat, 0.1, index, (9, 9))
    assert torch.equal(a, b)                                        # drawn from torch's RNG: seedable

def test_init():
    blk = PixelMixBlock(512, value='neck', qk_concat=True)
    for name, p in blk.named_parameters():
        if name.endswith('bias'): assert (p == 0).all(), name
        elif name == 'value.1.weight': assert (p == 1).all()
        else: assert abs(p.std().item() - 0.01) < 0.002, name

def test_bad_inputs():
    blk, feat, index = PixelMixBlock.automix(16), _feat(4, 16, 4, 4), torch.tensor([1, 2, 3, 0])
    bad = [
        (lambda: blk(feat[0], 0.3, index, (8, 8)), 'feat'),
        (lambda: blk(feat.long(), 0.3, index, (8, 8)), 'feat'),
        (lambda: blk(feat[:, :8], 0.3, index, (8, 8)), 'in_channels'),
        (lambda: blk(feat, 0.3, index[:3], (8, 8)), 'index'),
        (lambda: blk(feat, 0.3, index[None], (8, 8)), 'index'),
        (lambda: blk(feat, 0.3, index.float(), (8, 8)), 'index'),
        (lambda: blk(feat, 0.3, [1, 2, 3, 0], (8, 8)), 'index'),
        (lambda: blk(feat, 0.3, index + 1, (8, 8)), 'index'),
        (lambda: blk(feat, -0.1, index, (8, 8)), 'lam'),
        (lambda: blk(feat, float('nan'), index, (8, 8)), 'lam'),
        (lambda: blk(feat, torch.tensor(1.5), index, (8, 8)), 'lam'),
        (lambda: blk(feat, torch.rand(2), index, (8, 8)), 'lam'),
        (lambda: blk(feat, 'half', index, (8, 8)), 'lam'),
        (lambda: blk(feat, 0.3, index, 8), 'size'),
        (lambda: blk(feat, 0.3, index, (8, 8, 8)), 'size'),
        (lambda: blk(feat, 0.3, index, (8., 8)), 'size'),
        (lambda: blk(feat, 0.3, index, (0, 8)), 'size'),
        (lambda: PixelMixBlock(0), 'in_channels'),
        (lambda: PixelMixBlock(16, reduction=0), 'reduction'),
        (lambda: PixelMixBlock(16, value='mlp'), 'value'),
        (lambda: PixelMixBlock(16, upsample=[]), 'upsample'),
        (lambda: PixelMixBlock(16, dropout=1.), 'dropout'),
        (lambda: PixelMixBlock(16, lam_mul_k='k'), 'lam_mul_k'),
        (lambda: PixelMixBlock(16, lam_concat=True, lam_mul_k=0.25), 'lam_concat'),
    ]
    for f, word in bad:
        with pytest.raises(ValueError, match=word): f()

# ---------------------------------------------------------------------------------------------------------------
@FAST
@given(k=st.floats(0, 10), a=st.floats(0, 1), b=st.floats(0, 1))
def test_lam_rescale(k, a, b):
    for p in (0., .5, 1.): assert abs(lam_rescale(p, k) - p) < 1e-12
    lo, hi = min(a, b), max(a, b)
    assert lam_rescale(lo, k) <= lam_rescale(hi, k) + 1e-12          # monotone
    assert -1e-12 <= lam_rescale(a, k) <= 1 + 1e-12
    if a <= 0.5: assert lam_rescale(a, k) >= a                        # pulled toward ½ ...
    else: assert lam_rescale(a, k) <= a                               # ... from both sides
    assert abs(lam_rescale(a, k) - (a + 2/3 * a * (2*a - 1) * (a - 1) / (k + 1/3))) < 1e-12
    t = torch.tensor([a, b], dtype=torch.float64)
    torch.testing.assert_close(lam_rescale(t, k), torch.tensor([lam_rescale(a, k), lam_rescale(b, k)], dtype=torch.float64))

@given(k=st.floats(-10, -1e-9) | st.none(), a=st.floats(0, 1))
def test_lam_rescale_identity(k, a):
    assert lam_rescale(a, k) == a

def test_lam_rescale_value():
    assert abs(lam_rescale(0.1, 0.25) - (4/3 * 0.001 - 0.02 + 0.125) / (1.25 - 2/3)) < 1e-15

# ---------------------------------------------------------------------------------------------------------------
@FAST
@given(n=st.integers(1, 3), H=st.integers(1, 6), W=st.integers(1, 6), t=st.floats(-1, 1), margin=st.floats(0, 0.3),
       seed=st.integers(0, 99), mode=st.sampled_from(['l1', 'l1+var', 'l2+var']))
def test_mask_loss_margin(n, H, W, t, margin, seed, mode):
    "The λ term is zero while |mean(mask) - λ| <= margin, |dev| - margin (L1) or dev² - margin² (L2) beyond"
    mask = torch.rand(n, 1, H, W, generator=torch.Generator().manual_seed(seed))
    mu = mask.double().mean().item()
    lam = min(max(mu + t * (margin + 0.2), 0.), 1.)
    dev = abs(mu - lam)
    var = mask.double().var(unbiased=False).item() if mode != 'l1' else 0.
    lam_term = mask_loss(mask, lam, mode, margin).item() + 2 * var
    if dev <= margin - 1e-6: assert abs(lam_term) < 1e-6
    if dev >= margin + 1e-6:
        want = dev - margin if mode.startswith('l1') else dev**2 - margin**2
        assert lam_term > 0 and abs(lam_term - want) < 1e-5
    if mode == 'l1' and dev <= margin - 1e-6: assert mask_loss(mask, lam, mode, margin).item() == 0.

def test_mask_loss_exact_values():
    one_zero = torch.cat([torch.ones(1, 1, 3, 2), torch.zeros(1, 1, 3, 2)])   # μ = ½, Var = ¼ (per image: 0)
    quarter = torch.tensor([0.9, 0.1, 0.9, 0.1]).view(1, 1, 2, 2)             # μ = ½, Var = 0.16, |m(m-1)| = 0.09
    cases = {
        (0, 0.2, 'l1', 0.1): 0.2,         (0, 0.2, 'l1+var', 0.1): 0.2 - 0.5,
        (0, 0.2, 'l2+var', 0.1): 0.08 - 0.5, (0, 0.2, 'sparsity', 0.1): 0.,
        (0, 0.55, 'l1', 0.1): 0.,         (0, 0.55, 'l1+var', 0.1): -0.5,
        (1, 0.9, 'l1', 0.1): 0.3,         (1, 0.9, 'l1+var', 0.1): 0.3 - 0.32,
        (1, 0.9, 'l2+var', 0.2): 0.16 - 0.04 - 0.32, (1, 0.9, 'sparsity', 0.05): 0.04,
        (1, 0.9, 'sparsity', 0.1): 0.,
    }
    for (i, lam, mode, margin), want in cases.items():
        got = mask_loss((one_zero, quarter)[i], lam, mode, margin)
        assert got.shape == () and got.dtype == torch.float32
        assert abs(got.item() - want) < 1e-6, (i, lam, mode, margin, got.item(), want)

@pytest.mark.parametrize('mode', ['l1', 'l1+var', 'l2+var'])
@pytest.mark.parametrize('lam', [0.05, 0.95])
def test_mask_loss_pushes_mean_toward_lam(mode, lam):
    mask = (0.3 + 0.4 * torch.rand(3, 1, 6, 6)).requires_grad_()
    mask_loss(mask, lam, mode).backward()
    mean_grad = mask.grad.sum().item()        # d loss / d (shift of every pixel)
    assert (mean_grad > 0) == (lam < mask.mean().item())

def test_mask_loss_through_block_moves_mean():
    "One SGD step of the generator on the L1 mask loss moves the batch mean toward λ"
    blk, feat, index = PixelMixBlock.automix(16), _feat(8, 16, 4, 4), torch.randperm(8)
    opt = torch.optim.SGD(blk.parameters(), lr=1.)
    m0 = blk(feat, 0.1, index, (16, 16))
    mask_loss(m0, 0.1).backward(); opt.step()
    with torch.no_grad(): m1 = blk(feat, 0.1, index, (16, 16))
    assert m1.mean() < m0.mean().item() - 1e-4

def test_mask_loss_tensor_lam_and_bad_inputs():
    mask = torch.rand(2, 1, 4, 4)
    assert mask_loss(mask, torch.tensor(0.3)).item() == mask_loss(mask, 0.3).item()
    assert mask_loss(mask, torch.tensor([0.3]), 'l2+var').item() == pytest.approx(mask_loss(mask, 0.3, 'l2+var').item(), abs=1e-7)
    assert mask_loss(mask.half(), 0.3).dtype == torch.float32
    for f, word in [(lambda: mask_loss(mask[:, 0], 0.3), 'mask'), (lambda: mask_loss(torch.rand(2, 2, 4, 4), 0.3), 'mask'),
                    (lambda: mask_loss(mask, 1.1), 'lam'), (lambda: mask_loss(mask, torch.rand(2)), 'lam'),
                    (lambda: mask_loss(mask, 0.3, 'l2'), 'mode'), (lambda: mask_loss(mask, 0.3, margin=-1), 'margin')]:
        with pytest.raises(ValueError, match=word): f()
