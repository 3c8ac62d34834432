"Property tests of GridMix: a binary lattice mask inside the image, λ the realised share, each full cell keeping ≈ λ₀."
import math
import sys
from pathlib import Path
import pytest
import torch
from torch import nn
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.core import LAM_MODES, PAIRINGS, partner_index
from openmixup_nb.gridmix import gridmix, gridmix_lattice, gridmix_mask, GridMixCallback
from openmixup_nb.callback import MixCallback, MixedLoss, synth_dls

FAST = settings(max_examples=30, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
KEYS = ('y0', 'x0', 'ch', 'cw', 'ph', 'pw', 'hh', 'hw')

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

from _helpers import gen, distinct, Probe

@st.composite
def batches(draw, min_n=1, max_n=6, dtypes=DTYPES, min_side=1, max_side=40):
    "An image batch (N, C, H, W) with odd / non-square sizes, 1..3 channels, a dtype and int labels"
    n, c = draw(st.integers(min_n, max_n)), draw(st.integers(1, 3))
    h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y, seed


def loop_mask(lat, i, H, W):
    "The holes of lattice i drawn cell by cell with slices (OpenMixup's loop, on a region inside the image)"
    y0, x0, ch, cw, ph, pw, hh, hw = (int(lat[k][i]) for k in KEYS)
    assert 0 <= y0 and y0 + ch <= H and 0 <= x0 and x0 + cw <= W  # the cut region lies inside the image
    m = torch.zeros(H, W, dtype=torch.bool)
    for a in range(0, ch, ph):
        for b in range(0, cw, pw):
            m[y0 + a:y0 + min(a + hh, ch), x0 + b:x0 + min(b + hw, cw)] = True
    return m

OPTS = st.fixed_dictionaries({}, optional=dict(
    n_holes=st.one_of(st.integers(1, 8), st.tuples(st.integers(1, 3), st.integers(3, 8))),
    hole_aspect=st.one_of(st.floats(0.3, 3.), st.just((0.5, 2.))),
    cut_area_ratio=st.one_of(st.floats(0.05, 1.), st.just((0.3, 1.))),
    cut_aspect=st.one_of(st.floats(0.2, 5.), st.just((0.5, 2.))),
    lam_scope=st.sampled_from(['cell', 'image'])))

# ---------------------------------------------------------------------------------------------- the mask
@FAST
@given(b=batches(min_n=2), lam_mode=st.sampled_from(LAM_MODES), opts=OPTS,
       lam=st.one_of(st.none(), st.floats(0, 1), st.just('per-sample')))
def test_gridmix_binary_mask_and_realised_lam(b, lam_mode, opts, lam):
    x, y, seed = b
    x = distinct(x); x0 = x.clone()
    n, H, W = len(x), *x.shape[-2:]
    if lam == 'per-sample': lam = torch.rand(n, generator=gen(seed + 1))
    res = gridmix(x, y, 1., lam=lam, lam_mode=lam_mode, pairing='derangement', generator=gen(seed), **opts)
    assert torch.equal(x, x0) and res.x is not x
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x).all()
    m = res.mask
    per_sample = lam_mode == 'sample' or isinstance(lam, torch.Tensor)
    assert m.dtype == torch.float32 and m.shape == ((n if per_sample else 1), 1, H, W)
    assert ((m == 0) | (m == 1)).all()  # binary
    holes = gridmix_mask(res.extra['lattice'], H, W)  # the first image's weight is 0 exactly on the lattice's holes
    assert torch.equal(m.bool(), ~holes)
    # every pixel is the first image's where the mask is 1 and the partner's where it is 0
    assert torch.equal(res.x, torch.where(m.bool(), x, x[res.index]))
    kept = (res.x == x).all(1).double().mean((1, 2))
    assert (res.lam.double() - kept).abs().max() < 1e-6  # λ == share of pixels kept, exactly
    assert (res.lam - m.mean((1, 2, 3))).abs().max() < 1e-6
    if not per_sample: assert (res.lam == res.lam[0]).all()
    assert torch.equal(res.y_b, y[res.index])

@FAST
@given(H=st.integers(1, 48), W=st.integers(1, 48), n=st.integers(1, 5), opts=OPTS, seed=st.integers(0, 2**31 - 1))
def test_gridmix_mask_is_the_lattice_inside_the_image(H, W, n, opts, seed):
    "Holes only inside the cut region, the region inside the image (no wrap-around), exactly the lattice's cells"
    lam = torch.rand(n, generator=gen(seed))
    lat = gridmix_lattice(lam, H, W, generator=gen(seed), **opts)
    assert set(lat) == set(KEYS) and all(v.shape == (n,) and v.dtype == torch.long for v in lat.values())
    M = gridmix_mask(lat, H, W)
    assert M.shape == (n, 1, H, W) and M.dtype == torch.bool
    for i in range(n):
        assert torch.equal(M[i, 0], loop_mask(lat, i, H, W))
        ph, pw, hh, hw = (int(lat[k][i]) for k in ('ph', 'pw', 'hh', 'hw'))
        assert 1 <= ph <= int(lat['ch'][i]) and 1 <= pw <= int(lat['cw'][i])  # cells no larger than the region and 0 <= hh <= max(ph - 1, 0) and 0 <= hw <= max(pw - 1, 0)
    # λ from the lattice alone: the hole count is separable
    count = lambda c, p, h: (c // p) * h + torch.minimum(c % p, h)
    holes = count(lat['ch'], lat['ph'], lat['hh']) * count(lat['cw'], lat['pw'], lat['hw'])
    assert torch.equal(holes, M.sum((1, 2, 3)))

@pytest.mark.parametrize('cut_aspect', [0.2, 0.5, 2., 5.])
def test_gridmix_full_area_region_fits(cut_aspect):
    "OpenMixup's bug condition: a full-area region with an extreme aspect. The region is clamped to the image"
    for H, W in [(32, 32), (20, 50), (224, 224)]:
        lat = gridmix_lattice(torch.full((50,), 0.5), H, W, cut_area_ratio=1., cut_aspect=cut_aspect, generator=gen(0))
        assert (lat['y0'] == 0).all() and (lat['x0'] == 0).all() and (lat['ch'] == H).all() and (lat['cw'] == W).all()
        M = gridmix_mask(lat, H, W)
        assert M[:, 0, 0, 0].all()  # the lattice starts at the image corner, not wrapped
    # OpenMixup's region for these draws: outside the image
    cw = int(math.sqrt(32 * 32 / cut_aspect)); ch = int(cw * cut_aspect)
    assert cw > 32 or ch > 32

def test_gridmix_hole_sides_clamped():
    "λ₀ = 1 still leaves a one-pixel hole per cell and λ₀ = 0 a one-pixel gap (OpenMixup's clamp to [1, p-1])"
    for lam, side in [(1., torch.ones_like), (0., lambda p: p - 1), (0.9999, torch.ones_like), (1e-6, lambda p: p - 1)]:
        for scope in ('cell', 'image'):
            lat = gridmix_lattice(torch.full((20,), lam), 40, 56, cut_area_ratio=1., lam_scope=scope, generator=gen(0))
            assert torch.equal(lat['hh'], side(lat['ph'])) and torch.equal(lat['hw'], side(lat['pw']))
    lat = gridmix_lattice(torch.full((20,), 0.5), 1, 1, generator=gen(0))  # a 1-pixel region: no lattice, no hole
    assert (lat['hh'] * lat['hw'] == 0).all()

@FAST
@given(H=st.integers(1, 64), W=st.integers(1, 64), area=st.floats(0.01, 1.), aspect=st.floats(0.1, 10.), seed=st.integers(0, 2**31 - 1))
def test_gridmix_cut_region_keeps_its_area(H, W, area, aspect, seed):
    "The clamped region keeps the drawn area (up to flooring) and the drawn aspect when it fits"
    lat = gridmix_lattice(torch.tensor([0.5]), H, W, cut_area_ratio=area, cut_aspect=aspect, generator=gen(seed))
    ch, cw = int(lat['ch']), int(lat['cw'])
    a = max(math.floor(area * H * W), 1)
    assert 1 <= ch <= H and 1 <= cw <= W and ch * cw <= a
    assert ch * cw > a - cw  # ch = ⌊a / cw⌋: flooring loses less than a column
    cw0 = math.sqrt(a / aspect)
    if 2 <= cw0 <= W and 1 <= a / cw0 and a / math.floor(cw0) <= H:  # the drawn region fits: aspect kept up to flooring
        assert aspect - 1 / cw0 - 1e-9 < ch / cw < aspect * (cw0 / (cw0 - 1)) ** 2 + 1e-9

# ---------------------------------------------------------------------------------------------- λ₀ per cell / image
@FAST
@given(lam=st.floats(0.05, 0.95), H=st.integers(48, 96), W=st.integers(48, 96), n_holes=st.integers(2, 4),
       hole_aspect=st.floats(0.7, 1.), seed=st.integers(0, 2**31 - 1))
def test_gridmix_full_cells_keep_lam0(lam, H, W, n_holes, hole_aspect, seed):
    "lam_scope='cell': every full cell has the same hole, a share ≈ 1-λ₀ of it (flooring: below by < 1/p per side)"
    lat = gridmix_lattice(torch.tensor([lam]), H, W, n_holes=n_holes, hole_aspect=hole_aspect, cut_area_ratio=1.,
                          cut_aspect=H / W, generator=gen(seed)) # the whole image, cells of at most 48 pixels
    y0, x0, ch, cw, ph, pw, hh, hw = (int(lat[k][0]) for k in KEYS)
    M = gridmix_mask(lat, H, W)[0, 0]
    r = math.sqrt(1 - lam)
    full = [(a, b) for a in range(y0, y0 + ch - ph + 1, ph) for b in range(x0, x0 + cw - pw + 1, pw)]
    assert full
    fr = [int(M[a:a + ph, b:b + pw].sum()) / (ph * pw) for a, b in full]
    assert max(fr) == min(fr)  # the same in every full cell
    lo = max(r - 1 / ph, 1 / ph) * max(r - 1 / pw, 1 / pw)
    hi = min(max(r, 1 / ph), 1 - 1 / ph) * min(max(r, 1 / pw), 1 - 1 / pw)
    assert lo - 1e-9 <= fr[0] <= hi + 1e-9
    assert abs(fr[0] - (1 - lam)) < 2.5 / min(ph, pw) + 1e-9

@FAST
@given(lam=st.floats(0., 0.95), H=st.integers(16, 64), W=st.integers(16, 64), seed=st.integers(0, 2**31 - 1))
def test_gridmix_explicit_lam_cell_scope(lam, H, W, seed):
    "lam_scope='cell': holes no bigger than λ₀ asks (unless clamped to one pixel), so λ is about λ₀ or above"
    res = gridmix(torch.zeros(4, 1, H, W), None, lam=lam, lam_mode='sample', generator=gen(seed))
    assert torch.equal(res.extra['lam0'], torch.full((4,), lam, dtype=torch.float32))
    lat = gridmix_lattice(torch.full((100,), lam), H, W, generator=gen(seed))  # more draws, λ from the hole count
    count = lambda c, p, h: (c // p) * h + torch.minimum(c % p, h)
    realised = 1 - (count(lat['ch'], lat['ph'], lat['hh']) * count(lat['cw'], lat['pw'], lat['hw'])).double() / (H * W)
    r = math.sqrt(1 - lam)
    free = (lat['hh'] == (lat['ph'] * r).long()) & (lat['hw'] == (lat['pw'] * r).long())  # hole sides not clamped
    # full cells keep ≥ λ₀; a clipped last cell can keep less, so λ can dip below λ₀, a little and rarely
    assert (realised[free] >= lam - 0.1).all()
    if free.sum() >= 20: assert realised[free].mean() >= lam - 0.01

def test_gridmix_explicit_lam_image_scope():
    "lam_scope='image': the whole image keeps ≈ λ₀ where the cut region can hold the holes"
    g = gen(0)
    count = lambda c, p, h: (c // p) * h + torch.minimum(c % p, h)  # holes along one side (checked above)
    for H, tol in [(64, 0.025), (224, 0.01)]:
        lam = torch.rand(1000, generator=g) * 0.6 + 0.3
        lat = gridmix_lattice(lam, H, H, lam_scope='image', generator=g)
        realised = 1 - (count(lat['ch'], lat['ph'], lat['hh']) * count(lat['cw'], lat['pw'], lat['hw'])).double() / H**2
        # the largest holes a lattice allows: the cell less one pixel per side
        cap = ((lat['ph'] - 1) * (lat['pw'] - 1)).double() / (lat['ph'] * lat['pw']) * (lat['ch'] * lat['cw']).double() / H**2
        ok = cap > (1 - lam.double()) + 0.05
        assert ok.float().mean() > 0.6
        assert (realised - lam)[ok].abs().mean() < tol
        assert (realised - lam)[ok].abs().max() < 0.1
    res = gridmix(torch.zeros(64, 1, 224, 224), None, lam=0.5, lam_mode='sample', lam_scope='image', generator=g)
    assert abs(float(res.lam.mean()) - 0.5) < 0.03

# ---------------------------------------------------------------------------------------------- edge cases
@FAST
@given(b=batches(), lam_mode=st.sampled_from(LAM_MODES), lam=st.one_of(st.none(), st.floats(0, 1)))
def test_gridmix_identity_index(b, lam_mode, lam):
    x, y, seed = b
    res = gridmix(x, y, lam=lam, lam_mode=lam_mode, index=torch.arange(len(x)), generator=gen(seed))
    assert torch.equal(res.x, x) and torch.equal(res.y_b, y)

@FAST
@given(b=batches(), lam_mode=st.sampled_from(LAM_MODES), pairing=st.sampled_from(PAIRINGS))
def test_gridmix_deterministic_and_inplace(b, lam_mode, pairing):
    x, y, seed = b
    x0 = x.clone()
    r1 = gridmix(x, y, lam_mode=lam_mode, pairing=pairing, generator=gen(seed))
    r2 = gridmix(x, y, lam_mode=lam_mode, pairing=pairing, generator=gen(seed))
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.lam, r2.lam) and torch.equal(r1.index, r2.index)
    assert torch.equal(x, x0)
    r3 = gridmix(x, y, lam_mode=lam_mode, pairing=pairing, inplace=True, generator=gen(seed))
    assert r3.x is x and torch.equal(x, r1.x) and torch.equal(r3.lam, r1.lam)

def test_gridmix_lattices_vary_per_sample():
    res = gridmix(torch.zeros(64, 1, 32, 32), None, lam_mode='sample', generator=gen(0))
    assert len({tuple(int(res.extra['lattice'][k][i]) for k in KEYS) for i in range(64)}) > 30
    assert len(set(res.lam.tolist())) > 10
    res = gridmix(torch.zeros(64, 1, 32, 32), None, generator=gen(0))
    assert all(v.shape == (1,) for v in res.extra['lattice'].values())

def test_gridmix_global_rng_and_small_inputs():
    x, y = torch.randn(8, 3, 9, 7), torch.arange(8)
    for lam_mode in LAM_MODES:
        torch.manual_seed(3); a = gridmix(x, y, lam_mode=lam_mode)
        torch.manual_seed(3); b = gridmix(x, y, lam_mode=lam_mode)
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index)
        assert torch.equal(gridmix(x[:1], y[:1], lam_mode=lam_mode).x, x[:1])  # N=1: its own partner
    r = gridmix(torch.randn(3, 2, 1, 1), torch.arange(3), pairing='derangement')  # no room for a lattice
    assert torch.equal(r.lam, torch.ones(3))
    x3 = distinct(torch.randn(3, 12, 10))  # (N, H, W)
    r = gridmix(x3, None, lam=0.3, index=torch.tensor([1, 2, 0]), generator=gen(0))
    assert r.mask.shape == (1, 12, 10)
    assert torch.equal(r.x, torch.where(r.mask.bool(), x3, x3[[1, 2, 0]]))

X6, Y6 = torch.randn(6, 3, 8, 8), torch.arange(6)
BAD_ARGS = [
    (dict(alpha=0.), 'alpha'), (dict(alpha=-1.), 'alpha'), (dict(alpha=float('nan')), 'alpha'),
    (dict(lam=1.5), 'lam'), (dict(lam=-0.1), 'lam'), (dict(lam=float('nan')), 'lam'),
    (dict(lam=torch.rand(4)), 'lam'), (dict(lam=torch.rand(6, 1)), 'lam'),
    (dict(index=torch.arange(5)), 'index'), (dict(index=torch.arange(6) + 1), 'index'),
    (dict(index=torch.arange(6).float()), 'index'),
    (dict(lam_mode='pixel'), 'lam_mode'), (dict(pairing='roll'), 'pairing'), (dict(generator=3), 'generator'),
    (dict(n_holes=0), 'n_holes'), (dict(n_holes=(6, 2)), 'n_holes'), (dict(n_holes=2.5), 'n_holes'),
    (dict(n_holes=(1, 2, 3)), 'n_holes'), (dict(n_holes=True), 'n_holes'),
    (dict(hole_aspect=0), 'hole_aspect'), (dict(hole_aspect=(-1, 1)), 'hole_aspect'), (dict(hole_aspect='1'), 'hole_aspect'),
    (dict(cut_area_ratio=0), 'cut_area_ratio'), (dict(cut_area_ratio=1.5), 'cut_area_ratio'),
    (dict(cut_area_ratio=(0.9, 0.5)), 'cut_area_ratio'), (dict(cut_aspect=0), 'cut_aspect'),
    (dict(cut_aspect=float('inf')), 'cut_aspect'), (dict(lam_scope='pixel'), 'lam_scope'),
]

@pytest.mark.parametrize('kwargs,name', BAD_ARGS)
def test_bad_args_name_the_argument(kwargs, name):
    with pytest.raises(ValueError, match=name): gridmix(X6, Y6, **kwargs)

def test_bad_batches():
    with pytest.raises(ValueError, match='labels'): gridmix(X6, Y6[:5])
    with pytest.raises(ValueError, match='floating'): gridmix(X6.long(), Y6)
    with pytest.raises(ValueError, match='empty'): gridmix(X6[:0], Y6[:0])
    with pytest.raises(ValueError, match='dimensions'): gridmix(torch.randn(6, 4), Y6)

# ---------------------------------------------------------------------------------------------- callback
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.losses import CrossEntropyLossFlat
from fastai.optimizer import SGD
from fastai.torch_core import set_seed
import fastai.callback.progress  # noqa: F401  Learner.no_bar


@pytest.mark.parametrize('cb', [lambda: GridMixCallback(), lambda: GridMixCallback(1., n_holes=2, lam_scope='image', lam_mode='sample')])
def test_callback_trains_and_restores(tmp_path, cb):
    set_seed(0)
    probe = Probe()
    learn = Learner(synth_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=CrossEntropyLossFlat(),
                    opt_func=SGD, lr=0.1, cbs=[cb(), probe], path=tmp_path)
    lf = learn.loss_func
    with learn.no_logging(), learn.no_bar(): learn.fit(1, 0.1)
    assert learn.loss_func is lf
    assert len(probe.log) == 8 and all(m and w and d < 1e-5 for m, w, d in probe.log)

def test_callback_bad_args():
    with pytest.raises(ValueError, match='n_holes'): GridMixCallback(n_holes=0)
    with pytest.raises(ValueError, match='cut_area_ratio'): GridMixCallback(cut_area_ratio=2.)
    with pytest.raises(ValueError, match='lam_scope'): GridMixCallback(lam_scope='x')
    with pytest.raises(ValueError, match='alpha'): GridMixCallback(alpha=0)
    with pytest.raises(ValueError, match='p must'): GridMixCallback(p=-1)
