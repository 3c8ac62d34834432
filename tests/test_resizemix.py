"Property tests of ResizeMix: `resizemix`, its per-sample resize and `ResizeMixCallback`."
import sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.resizemix import resizemix, ResizeMixCallback, RESIZE_MODES, _resize_into, _resize_boxes, _sample_tau
from openmixup_nb.callback import synth_dls

FAST = settings(max_examples=40, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

from _helpers import gen, distinct


def area(b): return int((b[1] - b[0]) * (b[3] - b[2]))

@st.composite
def batches(draw, min_n=1, max_n=6, max_hw=12, dtypes=DTYPES):
    n, c = draw(st.integers(min_n, max_n)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, max_hw)), draw(st.integers(1, max_hw))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    return distinct(torch.randn(n, c, h, w, generator=g).to(dtype)), torch.randint(0, 5, (n,), generator=g), seed

# ---------------------------------------------------------------------------------------------- the mixed batch
@FAST
@given(b=batches(), mode=st.sampled_from(['batch', 'sample']), interp=st.sampled_from(RESIZE_MODES),
       use_alpha=st.booleans(), pairing=st.sampled_from(['perm', 'derangement', 'flip']))
def test_outside_box_is_x_inside_is_resized_partner(b, mode, interp, use_alpha, pairing):
    x, y, seed = b
    n, H, W = len(x), x.shape[-2], x.shape[-1]
    x0 = x.clone()
    res = resizemix(x, y, lam_mode=mode, pairing=pairing, interpolation=interp, use_alpha=use_alpha,
                    return_mask=True, generator=gen(seed))
    assert torch.equal(x, x0)  # not in place
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x.float()).all()
    assert res.lam.shape == (n,) and res.lam.dtype == torch.float32
    boxes = res.extra['boxes'].expand(n, 4) if mode == 'batch' else res.extra['boxes']
    assert len(res.extra['boxes']) == (n if mode == 'sample' else 1)
    kept = (res.x == x).all(1)  # (N, H, W): pixels of the first image (images differ everywhere)
    for i, bx in enumerate(boxes.tolist()):
        y1, y2, x1, x2 = bx
        inside = torch.zeros(H, W, dtype=torch.bool); inside[y1:y2, x1:x2] = True
        assert torch.equal(res.x[i][:, ~inside], x[i][:, ~inside])  # outside the box: x exactly
        if y2 > y1 and x2 > x1:
            ref = F.interpolate(x[res.index[i]][None], size=(y2-y1, x2-x1), mode=interp)[0]
            got = res.x[i, :, y1:y2, x1:x2]
            if interp == 'nearest' and x.dtype != torch.float64: assert torch.equal(got, ref)
            else:  # bilinear: grid_sample vs interpolate; float64 nearest may pick a neighbouring pixel (see notebook)
                tol = {torch.float32: 1e-4, torch.float64: 1e-9, torch.float16: 0.05, torch.bfloat16: 0.3}[x.dtype]
                if interp == 'nearest': tol = 6.01  # a neighbouring pixel of the same image (values in [-3, 3] + 10·i)
                assert (got.double() - ref.double()).abs().max() <= tol
        if res.index[i] != i: assert torch.equal(kept[i], ~inside)  # the pasted partner differs everywhere
        assert res.lam[i] == pytest.approx(1 - area(bx) / (H * W), abs=1e-6)  # λ = 1 - box fraction
        assert torch.equal(res.mask[i if mode == 'sample' else 0, 0], (~inside).float())
    tau = res.extra['tau']
    assert ((tau >= 0.1) & (tau <= 0.8)).all()
    assert ((1 - res.lam) <= 0.8**2 + 1e-6).all()  # partner weight ≤ scope_max²

@FAST
@given(b=batches(dtypes=[torch.float32]), mode=st.sampled_from(['batch', 'sample']))
def test_lam_is_realised_share_and_batch_mode_shares_one_box(b, mode):
    x, y, seed = b
    res = resizemix(x, y, lam_mode=mode, pairing='derangement', generator=gen(seed))
    kept = (res.x == x).all(1).float()
    if len(x) > 1: assert torch.allclose(kept.mean((1, 2)), res.lam, atol=1e-6)
    if mode == 'batch': assert torch.equal(kept, kept[:1].expand_as(kept))

@pytest.mark.parametrize('H,W', [(32, 32), (224, 224), (9, 13), (1, 17), (100, 37)])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float16, torch.bfloat16])
def test_per_sample_nearest_is_interpolate_exactly(H, W, dtype):
    "Every box of every sample, resized by the vectorised path, equals `F.interpolate` bit for bit"
    g = gen(H * W)
    n = 64
    xp = torch.randn(n, 2, H, W, generator=g).to(dtype)
    boxes = _resize_boxes(0.02 + 0.98 * torch.rand(n, generator=g), H, W, generator=g)
    out = _resize_into(xp, boxes, 'nearest')
    for i, (y1, y2, x1, x2) in enumerate(boxes.tolist()):
        if y2 > y1 and x2 > x1:
            assert torch.equal(out[i, :, y1:y2, x1:x2], F.interpolate(xp[i:i+1], size=(y2-y1, x2-x1), mode='nearest')[0])

def test_per_sample_nearest_all_box_sizes():
    "The nearest index arithmetic matches interpolate for every output size 1..H of a few input sizes"
    for H in (7, 31, 100, 224):
        x = torch.arange(H, dtype=torch.float32).view(1, 1, H, 1).expand(H, 1, H, 1).contiguous()
        boxes = torch.stack([torch.zeros(H, dtype=torch.long), torch.arange(1, H + 1),
                             torch.zeros(H, dtype=torch.long), torch.ones(H, dtype=torch.long)], 1)
        out = _resize_into(x, boxes, 'nearest')
        for o in range(1, H + 1):
            assert torch.equal(out[o-1, 0, :o, 0], F.interpolate(x[:1], size=(o, 1), mode='nearest')[0, 0, :, 0])

def test_per_sample_bilinear_close_to_interpolate():
    g = gen(1)
    xp = torch.rand(32, 3, 224, 160, generator=g)  # image-like values in [0, 1]
    boxes = _resize_boxes(0.1 + 0.7 * torch.rand(32, generator=g), 224, 160, generator=g)
    out = _resize_into(xp, boxes, 'bilinear')
    for i, (y1, y2, x1, x2) in enumerate(boxes.tolist()):
        ref = F.interpolate(xp[i:i+1], size=(y2-y1, x2-x1), mode='bilinear')[0]
        assert (out[i, :, y1:y2, x1:x2] - ref).abs().max() < 1e-4

def test_sample_and_batch_paths_agree_for_the_same_box():
    "Samples whose boxes coincide with the batch box get the batch path's result exactly"
    x = torch.randn(5, 3, 20, 14); idx = torch.tensor([4, 0, 1, 2, 3])
    for interp in RESIZE_MODES:
        rb = resizemix(x, None, lam=0.6, index=idx, interpolation=interp, generator=gen(3))
        box = rb.extra['boxes'].expand(5, 4)
        out = _resize_into(x[idx], box, interp)
        y1, y2, x1, x2 = box[0].tolist()
        tol = 0 if interp == 'nearest' else 1e-4
        assert (out[..., y1:y2, x1:x2] - rb.x[..., y1:y2, x1:x2]).abs().max() <= tol

# ---------------------------------------------------------------------------------------------- τ and λ
@FAST
@given(lam=st.floats(0, 1), H=st.integers(1, 64), W=st.integers(1, 64), mode=st.sampled_from(['batch', 'sample']))
def test_explicit_lam_sets_tau(lam, H, W, mode):
    res = resizemix(torch.randn(3, 1, H, W), None, lam=lam, lam_mode=mode, generator=gen(0))
    tau = (1 - torch.tensor(lam, dtype=torch.float32)).sqrt().clamp(0.1, 0.8)
    assert torch.equal(res.extra['tau'], tau.expand(3 if mode == 'sample' else 1))
    for b in res.extra['boxes'].tolist():  # unclipped boxes are exactly ⌊Hτ⌋ × ⌊Wτ⌋
        if b[0] > 0 and b[1] < H: assert b[1] - b[0] == int(H * tau)
        if b[2] > 0 and b[3] < W: assert b[3] - b[2] == int(W * tau)
        assert b[1] - b[0] <= int(H * tau) and b[3] - b[2] <= int(W * tau)

def test_tau_distribution():
    g = gen(0)
    for use_alpha in (True, False):  # α = 1: the Beta draw is uniform, and so is its in-scope re-draw
        tau = _sample_tau(50000, 1., 0.1, 0.8, use_alpha, g)
        assert ((tau >= 0.1) & (tau <= 0.8)).all()
        hist = torch.histc(tau, 7, 0.1, 0.8) / len(tau)
        assert (hist - 1/7).abs().max() < 0.01
    tau = _sample_tau(2000, 5000., 0.1, 0.8, True, g)  # concentrated at 0.5 (sd 0.007)
    assert ((tau - 0.5).abs() < 0.04).all()
    tau = _sample_tau(2000, 1., 0.3, 0.3, True, g)
    assert torch.allclose(tau, torch.full_like(tau, 0.3))

def test_tiny_images_paste_nothing():
    res = resizemix(torch.randn(4, 3, 1, 1), torch.arange(4), lam_mode='sample')
    assert (res.lam == 1).all()

# ---------------------------------------------------------------------------------------------- identity, N=1, determinism
@pytest.mark.parametrize('mode', ['batch', 'sample'])
def test_identity_partner_keeps_labels(mode):
    "A shrunk copy of each image is pasted into itself: pixels change, the target does not"
    x, y = torch.randn(6, 3, 16, 16), torch.arange(6)
    res = resizemix(x, y, index=torch.arange(6), lam_mode=mode)
    assert torch.equal(res.soft_target(6), torch.eye(6))
    assert torch.equal(res.y_b, y)

@pytest.mark.parametrize('mode', ['batch', 'sample'])
def test_single_sample(mode):
    res = resizemix(torch.randn(1, 3, 8, 8), torch.tensor([2]), lam_mode=mode, pairing='derangement')
    assert res.index.tolist() == [0] and res.x.shape == (1, 3, 8, 8)

def test_determinism_and_global_rng():
    x, y = torch.randn(8, 3, 16, 16), torch.arange(8)
    torch.manual_seed(123); ref = torch.rand(5)
    torch.manual_seed(123)
    r1 = resizemix(x, y, lam_mode='sample', generator=gen(7))
    assert torch.equal(torch.rand(5), ref)  # the generator leaves torch's global RNG alone
    r2 = resizemix(x, y, lam_mode='sample', generator=gen(7))
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.lam, r2.lam) and torch.equal(r1.index, r2.index)
    torch.manual_seed(5); a = resizemix(x, y)
    torch.manual_seed(5); b = resizemix(x, y)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(resizemix(x, y, generator=gen(1)).x, resizemix(x, y, generator=gen(2)).x)

@pytest.mark.parametrize('mode', ['batch', 'sample'])
@pytest.mark.parametrize('interp', RESIZE_MODES)
def test_inplace(mode, interp):
    x = torch.randn(5, 3, 12, 10); xc = x.clone()
    r = resizemix(x, None, lam_mode=mode, interpolation=interp, inplace=True, generator=gen(0))
    assert r.x is x
    assert torch.equal(x, resizemix(xc, None, lam_mode=mode, interpolation=interp, generator=gen(0)).x)

@pytest.mark.parametrize('shape', [(3, 2, 3, 9, 9), (4, 9, 7)])
def test_other_layouts(shape):
    x = distinct(torch.randn(*shape))
    for mode in ('batch', 'sample'):
        for interp in RESIZE_MODES:
            r = resizemix(x, None, lam_mode=mode, interpolation=interp, pairing='derangement', return_mask=True)
            assert r.x.shape == x.shape and r.mask.shape[-2:] == shape[-2:] and r.mask.ndim == len(shape)
            keep = r.mask.bool().expand_as(x)
            assert torch.equal(r.x[keep], x[keep]) and not (r.x == x)[~keep].any()

# ---------------------------------------------------------------------------------------------- bad arguments
X, Y = torch.randn(4, 3, 8, 8), torch.arange(4)

@pytest.mark.parametrize('kwargs,name', [
    (dict(alpha=0.), 'alpha'), (dict(alpha=-1.), 'alpha'), (dict(lam=1.5), 'lam'), (dict(lam=torch.ones(3)), 'lam'),
    (dict(index=torch.tensor([0, 1])), 'index'), (dict(index=torch.tensor([0, 1, 2, 9])), 'index'),
    (dict(lam_mode='pixel'), 'lam_mode'), (dict(pairing='roll'), 'pairing'), (dict(generator=3), 'generator'),
    (dict(scope=(0.5, 0.2)), 'scope'), (dict(scope=(0., 0.5)), 'scope'), (dict(scope=(0.1, 1.2)), 'scope'),
    (dict(scope=0.5), 'scope'), (dict(scope=('a', 'b')), 'scope'), (dict(scope=(0.1, 0.2, 0.3)), 'scope'),
    (dict(interpolation='bicubic'), 'interpolation'), (dict(use_alpha='yes'), 'use_alpha')])
def test_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name): resizemix(X, Y, **kwargs)

def test_bad_batches():
    with pytest.raises(ValueError, match='labels'): resizemix(X, torch.arange(3))
    with pytest.raises(ValueError, match='dimensions'): resizemix(torch.randn(4, 8), Y)
    with pytest.raises(ValueError, match='floating'): resizemix(torch.ones(4, 3, 8, 8, dtype=torch.long), Y)

# ---------------------------------------------------------------------------------------------- the callback
@pytest.mark.parametrize('kwargs,name', [(dict(alpha=0), 'alpha'), (dict(scope=(0.9, 0.1)), 'scope'),
                                         (dict(interpolation='area'), 'interpolation'), (dict(lam_mode='x'), 'lam_mode'),
                                         (dict(p=2.), 'p')])
def test_callback_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name): ResizeMixCallback(**kwargs)

@pytest.mark.parametrize('kwargs', [{}, dict(lam_mode='sample', interpolation='bilinear')])
def test_callback_trains_and_restores_loss(kwargs):
    from fastai.learner import Learner
    from fastai.callback.progress import ProgressCallback  # noqa: F401  Learner.no_bar
    from fastai.losses import CrossEntropyLossFlat
    from fastai.torch_core import set_seed
    set_seed(0)
    lf = CrossEntropyLossFlat()
    cb = ResizeMixCallback(generator=gen(0), **kwargs)
    learn = Learner(synth_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=lf, cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.1)
    assert learn.loss_func is lf
    assert all(torch.isfinite(torch.tensor(v)).all() for v in learn.recorder.values[-1])
    b = learn.dls.one_batch(); learn._split(b); learn.training = True
    x0 = learn.x.clone()
    cb('before_train'); cb('before_batch')
    assert cb.res is not None and learn.xb[0] is cb.res.x and not torch.equal(cb.res.x, x0)
    cb('after_train')
