"Property tests of SaliencyMix: spectral-residual saliency, the saliency-centred boxes and `SaliencyMixCallback`."
import sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.saliencymix import spectral_saliency, saliencymix, SaliencyMixCallback
from openmixup_nb.callback import synth_dls
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
import fastai.callback.progress  # noqa: F401  Learner.no_bar

FAST = settings(max_examples=25, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

from _helpers import gen, distinct

@st.composite
def batches(draw, min_n=1, max_n=6, max_side=12, dtypes=DTYPES):
    "An image batch (N, C, H, W) with odd / non-square sizes, 1..4 channels, a dtype and int labels"
    n, c = draw(st.integers(min_n, max_n)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, max_side)), draw(st.integers(1, max_side))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    return x, torch.randint(0, 5, (n,), generator=g), seed


def rect(m):
    "Whether a (H, W) bool map is one axis-aligned rectangle (or empty); returns (ok, (y1, y2, x1, x2))"
    rows, cols = m.any(1), m.any(0)
    if not rows.any(): return True, None
    r, c = rows.nonzero().flatten(), cols.nonzero().flatten()
    contiguous = (r[-1] - r[0] + 1 == len(r)) and (c[-1] - c[0] + 1 == len(c))
    return bool(contiguous and torch.equal(m, rows[:, None] & cols[None, :])), (int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1)

def blob_image(cy, cx, H, W, seed=0, noise=0.1):
    yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij')
    blob = 3 * torch.exp(-((yy - cy)**2 + (xx - cx)**2) / 8.)
    return noise * torch.randn(3, H, W, generator=gen(seed)) + blob

# ------------------------------------------------------------------------------------------ saliency
@FAST
@given(b=batches(max_side=40))
def test_saliency_shape_range_deterministic(b):
    x, _, _ = b
    s = spectral_saliency(x)
    assert s.shape == (x.shape[0], *x.shape[2:]) and s.dtype == torch.float32
    assert torch.isfinite(s).all() and (s >= 0).all() and (s <= 1 + 1e-6).all()
    assert torch.equal(s, spectral_saliency(x.clone()))  # deterministic
    # every image's map is its own: the same with the image alone as within the batch
    torch.testing.assert_close(spectral_saliency(x[-1:]), s[-1:], atol=1e-5, rtol=1e-4)

@FAST
@given(cy=st.integers(5, 26), cx=st.integers(5, 34), seed=st.integers(0, 2**31 - 1))
def test_saliency_peaks_at_the_blob(cy, cx, seed):
    "At least 5 pixels from the border (the FFT treats the image as periodic, so a blob at the edge can peak 2 px off)"
    x = blob_image(cy, cx, 32, 40, seed)[None]
    py, px = divmod(int(spectral_saliency(x).flatten().argmax()), 40)
    assert abs(py - cy) <= 1 and abs(px - cx) <= 1

def periodic_component(u):
    "Moisan's periodic component of one (H, W) image: u - s with Δs = the border jumps, solved as a dense linear system"
    H, W = u.shape
    v = torch.zeros_like(u)
    v[0] += u[-1] - u[0]; v[-1] -= u[-1] - u[0]; v[:, 0] += u[:, -1] - u[:, 0]; v[:, -1] -= u[:, -1] - u[:, 0]
    idx = torch.arange(H * W).view(H, W)
    lap = -4 * torch.eye(H * W, dtype=u.dtype)  # the periodic 5-point Laplacian
    for shift in [(1, 0), (-1, 0), (0, 1), (0, -1)]: lap[idx.flatten(), idx.roll(shift, (0, 1)).flatten()] += 1
    n = H * W  # v sums to 0, so adding the mean to the singular Laplacian gives the zero-mean solution
    s = torch.linalg.solve(lap + torch.ones(n, n, dtype=u.dtype) / n, v.flatten())
    return u - s.view(H, W)

def reference_saliency(img, sigma=1/16):
    "Hou & Zhang's recipe written out literally for one small image (no downscaling), in float64"
    g = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2]) if len(img) == 3 else img.mean(0)
    f = torch.fft.fft2(periodic_component(g.double()))
    L, P = torch.log(f.abs() + 1e-8), torch.angle(f)
    R = L - F.avg_pool2d(F.pad(L[None, None], (1, 1, 1, 1), mode='circular'), 3, 1)[0, 0]  # spectral residual
    S = torch.fft.ifft2(torch.polar(torch.exp(R), P)).abs()**2
    H, W = S.shape
    sp = sigma * max(H, W)
    i, j = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64), indexing='ij')
    w = torch.exp(-((i.reshape(-1, 1) - i.reshape(1, -1))**2 + (j.reshape(-1, 1) - j.reshape(1, -1))**2) / (2 * sp**2))
    S = ((w @ S.reshape(-1)) / w.sum(1)).reshape(H, W)  # Gaussian blur, renormalised inside the image
    return (S / S.max()).float()

@FAST
@given(c=st.sampled_from([1, 3]), h=st.integers(3, 24), w=st.integers(3, 24), seed=st.integers(0, 2**31 - 1))
def test_saliency_matches_the_literal_recipe(c, h, w, seed):
    x = torch.randn(2, c, h, w, generator=gen(seed))
    s = spectral_saliency(x)
    for i in range(2): torch.testing.assert_close(s[i], reference_saliency(x[i]), atol=1e-3, rtol=0)

@pytest.mark.parametrize('H,W', [(224, 224), (160, 96)])
def test_saliency_large_images_blob(H, W):
    "Images larger than `size` are processed at 64 on the long side; the peak still lands on the blob"
    g = gen(0)
    for _ in range(5):
        cy, cx = int(torch.randint(20, H - 20, (1,), generator=g)), int(torch.randint(20, W - 20, (1,), generator=g))
        yy, xx = torch.meshgrid(torch.arange(H), torch.arange(W), indexing='ij')
        x = (0.1 * torch.randn(1, 3, H, W, generator=g) + 3 * torch.exp(-((yy - cy)**2 + (xx - cx)**2) / 50.))
        py, px = divmod(int(spectral_saliency(x).flatten().argmax()), W)
        assert abs(py - cy) <= H // 16 and abs(px - cx) <= W // 16

def test_saliency_scale_invariant():
    "Normalised or raw pixels: a positive scale of the image leaves the map unchanged"
    x = torch.randn(4, 3, 32, 32, generator=gen(1))
    torch.testing.assert_close(spectral_saliency(3.7 * x), spectral_saliency(x), atol=1e-4, rtol=1e-3)

def test_saliency_errors():
    for bad in (torch.randn(3, 8, 8), torch.randint(0, 9, (1, 3, 8, 8)), torch.randn(1, 1, 3, 8, 8)):
        with pytest.raises(ValueError, match='x must'): spectral_saliency(bad)
    with pytest.raises(ValueError, match='size'): spectral_saliency(torch.randn(1, 3, 8, 8), size=0)
    with pytest.raises(ValueError, match='size'): spectral_saliency(torch.randn(1, 3, 8, 8), size=2.5)
    with pytest.raises(ValueError, match='sigma'): spectral_saliency(torch.randn(1, 3, 8, 8), sigma=float('nan'))

# ------------------------------------------------------------------------------------------ saliencymix
@FAST
@given(b=batches(), mode=st.sampled_from(['batch', 'sample']), per_image=st.booleans(),
       pairing=st.sampled_from(['perm', 'derangement', 'flip']), alpha=st.sampled_from([0.2, 1., 4.]))
def test_cutmix_invariants(b, mode, per_image, pairing, alpha):
    x, y, seed = b
    x = distinct(x); x0 = x.clone()
    res = saliencymix(x, y, alpha, lam_mode=mode, pairing=pairing, per_image=per_image, generator=gen(seed))
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x.float()).all()
    assert torch.equal(x, x0)  # not in place
    assert res.lam.shape == (len(x),) and res.lam.dtype == torch.float32
    assert torch.equal(res.y_a, y) and torch.equal(res.y_b, y[res.index])
    H, W = x.shape[-2:]
    kept = (res.x == x).all(1)  # taken from the first image
    from_partner = (res.x == x[res.index]).all(1)
    self_pair = res.index == torch.arange(len(x))
    assert (kept | from_partner).all()
    boxes = res.extra['box']
    for i in range(len(x)):
        y1, y2, x1, x2 = boxes[i if len(boxes) > 1 else 0].tolist()
        area = (y2 - y1) * (x2 - x1)
        assert abs(float(res.lam[i]) - (1 - area / (H * W))) < 1e-6  # λ == 1 - box area
        if self_pair[i]: assert torch.equal(res.x[i], x[i]); continue
        ok, bb = rect(~kept[i])
        assert ok  # the changed pixels: one rectangle
        assert (bb is None and area == 0) or bb == (y1, y2, x1, x2)
        assert abs(float(kept[i].float().mean()) - float(res.lam[i])) < 1e-6  # λ == realised share
    c = res.extra['centre']
    if not per_image: assert (c == c[:1]).all()  # OpenMixup: one centre for the batch
    if not per_image and mode == 'batch': assert len(boxes) == 1 and res.mask.shape[0] == 1  # ... and one box

@FAST
@given(b=batches(min_n=2, max_side=20, dtypes=[torch.float32]), lam=st.floats(0., 1.), per_image=st.booleans(),
       mode=st.sampled_from(['batch', 'sample']))
def test_box_centred_on_partner_saliency_peak(b, lam, per_image, mode):
    x, y, seed = b
    n, (H, W) = len(x), x.shape[-2:]
    lam0 = torch.rand(n, generator=gen(seed)) if mode == 'sample' else torch.tensor([lam])
    res = saliencymix(x, y, lam=lam0, per_image=per_image, generator=gen(seed))
    peak = spectral_saliency(x).flatten(1).argmax(1)[res.index]
    centre = torch.stack([peak // W, peak % W], 1)
    if not per_image: centre = centre[:1]  # OpenMixup: the first partner's peak for the batch
    assert torch.equal(res.extra['centre'], centre.expand_as(res.extra['centre']))
    # the box before clipping is h × w around that centre
    r = torch.sqrt(1 - lam0)
    h, w = (H * r).long(), (W * r).long()
    cy, cx = res.extra['centre'].unbind(1)
    want = torch.stack([(cy - h // 2).clamp(0, H), (cy + (h + 1) // 2).clamp(0, H),
                        (cx - w // 2).clamp(0, W), (cx + (w + 1) // 2).clamp(0, W)], 1)
    assert torch.equal(res.extra['box'], want)

def test_blob_partner_gets_the_blob():
    "Each sample's box lands on its own partner's blob (OpenMixup's shared centre would not)"
    centres = [(5, 6), (20, 30), (16, 20), (27, 8), (9, 33), (24, 18)]
    x = torch.stack([blob_image(cy, cx, 32, 40, i) for i, (cy, cx) in enumerate(centres)])
    index = torch.tensor([3, 4, 5, 0, 1, 2])
    res = saliencymix(x, torch.arange(6), lam=0.9, index=index)
    for i, j in enumerate(index.tolist()):
        cy, cx = centres[j]
        assert torch.equal(res.x[i, :, cy, cx], x[j, :, cy, cx])  # the partner's blob centre was pasted
        assert (res.extra['centre'][i] - torch.tensor([cy, cx])).abs().max() <= 1
    shared = saliencymix(x, torch.arange(6), lam=0.9, index=index, per_image=False)
    assert (shared.extra['centre'][0] - torch.tensor(centres[3])).abs().max() <= 1

@given(b=batches(), mode=st.sampled_from(['batch', 'sample']), per_image=st.booleans())
@FAST
def test_identity_partner_and_inplace(b, mode, per_image):
    x, y, seed = b
    same = saliencymix(x, y, index=torch.arange(len(x)), lam_mode=mode, per_image=per_image, generator=gen(seed))
    assert torch.equal(same.x, x)
    xc = x.clone()
    ref = saliencymix(x, y, lam_mode=mode, per_image=per_image, generator=gen(seed))
    out = saliencymix(xc, y, lam_mode=mode, per_image=per_image, generator=gen(seed), inplace=True)
    assert out.x is xc and torch.equal(out.x, ref.x) and torch.equal(out.lam, ref.lam)

@FAST
@given(b=batches(), mode=st.sampled_from(['batch', 'sample']))
def test_seeded_determinism(b, mode):
    x, y, seed = b
    r1, r2 = (saliencymix(x, y, 1., lam_mode=mode, generator=gen(seed)) for _ in range(2))
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.lam, r2.lam) and torch.equal(r1.index, r2.index)

def test_sample_mode_varies_box_size():
    x = torch.randn(32, 3, 32, 32)
    res = saliencymix(x, torch.arange(32), 1., lam_mode='sample', generator=gen(0))
    assert len(set(res.lam.tolist())) > 10
    b = res.extra['box']
    assert len(set(((b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])).tolist())) > 5

def test_soft_labels_and_none():
    x = torch.randn(4, 3, 8, 8); y = torch.eye(5)[:4]
    res = saliencymix(x, y, lam=0.5, index=torch.tensor([1, 0, 3, 2]))
    t = res.soft_target()
    torch.testing.assert_close(t.sum(1), torch.ones(4))
    assert saliencymix(x, None).y_b is None

def test_errors():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    with pytest.raises(ValueError, match='dimensions'): saliencymix(torch.randn(4, 8, 8), y)
    with pytest.raises(ValueError, match='N, C, H, W'): saliencymix(torch.randn(4, 2, 3, 8, 8), y)
    with pytest.raises(ValueError, match='labels'): saliencymix(x, torch.arange(3))
    with pytest.raises(ValueError, match='alpha'): saliencymix(x, y, alpha=0)
    with pytest.raises(ValueError, match='alpha'): saliencymix(x, y, alpha=-1.)
    with pytest.raises(ValueError, match='lam'): saliencymix(x, y, lam=1.5)
    with pytest.raises(ValueError, match='lam'): saliencymix(x, y, lam=torch.rand(3))
    with pytest.raises(ValueError, match='index'): saliencymix(x, y, index=torch.tensor([0, 1, 2, 9]))
    with pytest.raises(ValueError, match='lam_mode'): saliencymix(x, y, lam_mode='pixel')
    with pytest.raises(ValueError, match='pairing'): saliencymix(x, y, pairing='random')
    with pytest.raises(ValueError, match='per_image'): saliencymix(x, y, per_image=1)
    with pytest.raises(ValueError, match='size'): saliencymix(x, y, size=0)
    with pytest.raises(ValueError, match='sigma'): saliencymix(x, y, sigma=-0.1)
    with pytest.raises(ValueError, match='generator'): saliencymix(x, y, generator=1)

# ------------------------------------------------------------------------------------------ callback
@pytest.mark.parametrize('kw', [{}, {'lam_mode': 'sample', 'alpha': 1.}, {'per_image': False}, {'p': 0.5}])
def test_callback_trains_and_restores_loss(kw):
    torch.manual_seed(0)
    lf = CrossEntropyLossFlat()
    learn = Learner(synth_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=lf, cbs=SaliencyMixCallback(**kw))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.1)
    assert learn.loss_func is lf
    assert all(torch.isfinite(torch.tensor(v)).all() for v in learn.recorder.values[-1])

def test_callback_mixes_the_batch():
    cb = SaliencyMixCallback(1., lam_mode='sample', generator=gen(0))
    learn = Learner(synth_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=CrossEntropyLossFlat(), cbs=cb)
    b = learn.dls.one_batch(); x0 = b[0].clone()
    learn._split(b); learn.training = True
    cb('before_train'); cb('before_batch')
    ref = saliencymix(x0, b[1], 1., lam_mode='sample', generator=gen(0))
    assert torch.equal(learn.x, ref.x) and torch.equal(cb.res.lam, ref.lam)
    cb('after_train')

def test_callback_errors():
    with pytest.raises(ValueError, match='alpha'): SaliencyMixCallback(alpha=0)
    with pytest.raises(ValueError, match='lam_mode'): SaliencyMixCallback(lam_mode='x')
    with pytest.raises(ValueError, match='per_image'): SaliencyMixCallback(per_image=None)
    with pytest.raises(ValueError, match='size'): SaliencyMixCallback(size=-1)
    with pytest.raises(ValueError, match='sigma'): SaliencyMixCallback(sigma='a')
    with pytest.raises(ValueError, match='p must'): SaliencyMixCallback(p=2)
