"Property tests of the mixing core: `sample_lam`, `partner_index`, `mixup`, `cutmix` and the `MixCallback` wiring."
import sys
from pathlib import Path
import pytest
import torch
from torch import nn
from hypothesis import given, settings, assume, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.core import sample_lam, partner_index, mix_params, MixResult, PAIRINGS, LAM_MODES
from openmixup_nb.mixup import mixup, MixupCallback
from openmixup_nb.cutmix import cutmix, cutmix_boxes, CutMixCallback
from openmixup_nb.callback import MixCallback, MixedLoss, synth_dls

FAST = settings(max_examples=30, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# absolute tolerance of a blend against a float64 reference (inputs are O(1)): λ itself is rounded to the dtype
ATOL = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 1e-2, torch.bfloat16: 5e-2}

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

from _helpers import gen, distinct

@st.composite
def batches(draw, min_n=1, max_n=6, dtypes=DTYPES):
    "An image batch (N, C, H, W) with odd / non-square sizes, 1..4 channels, a dtype and int labels"
    n, c = draw(st.integers(min_n, max_n)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 9)), draw(st.integers(1, 9))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    y = torch.randint(0, 5, (n,), generator=g)
    return x, y, seed


def is_perm(idx, n): return torch.equal(idx.sort().values.cpu(), torch.arange(n))

def rect(m):
    "Whether a (H, W) bool map is one axis-aligned rectangle (or empty); returns (ok, area)"
    rows, cols = m.any(1), m.any(0)
    if not rows.any(): return True, 0
    r, c = rows.nonzero().flatten(), cols.nonzero().flatten()
    contiguous = (r[-1] - r[0] + 1 == len(r)) and (c[-1] - c[0] + 1 == len(c))
    return bool(contiguous and torch.equal(m, rows[:, None] & cols[None, :])), int(m.sum())

# ---------------------------------------------------------------------------------------------- sample_lam
@FAST
@given(alpha=st.sampled_from([1e-3, 0.01, 0.05, 0.0999, 0.1, 0.2, 1., 2., 50.]), n=st.integers(1, 300),
       fold=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_sample_lam_range_dtype_determinism(alpha, n, fold, seed):
    lam = sample_lam(alpha, n, fold=fold, generator=gen(seed))
    assert lam.shape == (n,) and lam.dtype == torch.float32 and lam.device.type == 'cpu'
    assert torch.isfinite(lam).all() and (lam >= 0).all() and (lam <= 1).all()
    assert torch.equal(lam, sample_lam(alpha, n, fold=fold, generator=gen(seed)))
    if fold: assert (lam >= 0.5).all()

def test_sample_lam_generator_leaves_global_rng_alone():
    torch.manual_seed(123); ref = torch.rand(5)
    torch.manual_seed(123); sample_lam(1., 10, generator=gen(0)); sample_lam(0.01, 10, generator=gen(1))
    assert torch.equal(torch.rand(5), ref)

def test_sample_lam_global_rng_seeded_and_like_fastai():
    "Without a generator the draws are torch's global-RNG Beta draws, the same as fastai's callbacks make"
    torch.manual_seed(7); a = sample_lam(0.4, 16)
    torch.manual_seed(7); b = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4)).sample((16,))
    assert torch.equal(a, b)
    torch.manual_seed(7); assert torch.equal(sample_lam(0.4, 16), a)
    assert not torch.equal(sample_lam(0.4, 16, generator=gen(1)), sample_lam(0.4, 16, generator=gen(2)))

@pytest.mark.parametrize('alpha', [1e-3, 0.01])
def test_sample_lam_tiny_alpha_goes_to_the_ends(alpha):
    lam = sample_lam(alpha, 20000, generator=gen(0))
    assert not (lam == 0.5).any()  # torch's Beta sampler returns exactly 0.5 here a third of the time
    assert ((lam - 0.5).abs() > 0.45).float().mean() > 0.97
    assert 0.4 < (lam > 0.5).float().mean() < 0.6  # both ends, symmetrically

@pytest.mark.parametrize('alpha', [0.02, 0.05, 0.0999, 0.1, 0.3, 1., 2., 8.])
def test_sample_lam_moments(alpha):
    "Mean 1/2 and variance 1/(4(2α+1)) of Beta(α, α), on both sides of the small-α switch"
    lam = sample_lam(alpha, 40000, generator=gen(1)).double()
    assert abs(lam.mean() - 0.5) < 0.02
    var = 1 / (4 * (2 * alpha + 1))
    assert abs(lam.var() / var - 1) < 0.05

def test_sample_lam_large_alpha_concentrates():
    lam = sample_lam(1e4, 2000, generator=gen(0))
    assert ((lam - 0.5).abs() < 0.03).all()

@pytest.mark.parametrize('alpha', [0, -1., float('nan'), float('inf'), True, '1', None])
def test_sample_lam_bad_alpha(alpha):
    with pytest.raises(ValueError, match='alpha'): sample_lam(alpha)

def test_bad_generator():
    with pytest.raises(ValueError, match='generator'): sample_lam(1., generator=0)
    with pytest.raises(ValueError, match='generator'): partner_index(3, generator='g')

# ---------------------------------------------------------------------------------------------- partner_index
@FAST
@given(n=st.integers(1, 40), pairing=st.sampled_from(PAIRINGS), seed=st.integers(0, 2**31 - 1))
def test_partner_index_is_permutation(n, pairing, seed):
    idx = partner_index(n, pairing, generator=gen(seed))
    assert idx.dtype == torch.long and idx.shape == (n,) and is_perm(idx, n)
    assert torch.equal(idx, partner_index(n, pairing, generator=gen(seed)))
    if pairing == 'flip': assert torch.equal(idx, torch.arange(n).flip(0))
    if pairing == 'derangement':
        if n == 1: assert torch.equal(idx, torch.tensor([0]))
        else: assert (idx != torch.arange(n)).all()

def test_partner_index_small_and_bad():
    assert torch.equal(partner_index(2, 'derangement'), torch.tensor([1, 0]))
    assert torch.equal(partner_index(1, 'perm'), torch.tensor([0]))
    with pytest.raises(ValueError, match='pairing'): partner_index(4, 'roll')
    with pytest.raises(ValueError, match='batch size'): partner_index(0)

def test_derangements_vary():
    "Random derangements, not one fixed cyclic shift"
    seen = {tuple(partner_index(6, 'derangement', generator=gen(s)).tolist()) for s in range(20)}
    assert len(seen) > 5

# ---------------------------------------------------------------------------------------------- mixup
def blend_ref(x, lam, index):
    "λ·x + (1-λ)·x[index] in float64"
    xd, l = x.double(), lam.double().view(-1, *[1]*(x.ndim-1))
    return l * xd + (1 - l) * xd[index]

@FAST
@given(b=batches(), lam_mode=st.sampled_from(LAM_MODES), pairing=st.sampled_from(PAIRINGS),
       alpha=st.sampled_from([0.01, 0.2, 1., 4.]), fold=st.booleans())
def test_mixup_linear_combination(b, lam_mode, pairing, alpha, fold):
    x, y, seed = b
    x0 = x.clone()
    res = mixup(x, y, alpha, lam_mode=lam_mode, fold=fold, pairing=pairing, generator=gen(seed))
    n = len(x)
    assert torch.equal(x, x0)  # input untouched
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and res.x.device == x.device and res.x is not x
    assert torch.isfinite(res.x).all()
    assert res.lam.shape == (n,) and res.lam.dtype == torch.float32 and ((res.lam >= 0) & (res.lam <= 1)).all()
    assert res.index.shape == (n,) and is_perm(res.index, n)
    if lam_mode == 'batch': assert (res.lam == res.lam[0]).all()
    if fold: assert (res.lam >= 0.5).all()
    assert torch.equal(res.y_a, y) and torch.equal(res.y_b, y[res.index])
    torch.testing.assert_close(res.x.double(), blend_ref(x, res.lam, res.index), atol=ATOL[x.dtype], rtol=0)
    # soft targets: λ·e(y_a) + (1-λ)·e(y_b), non-negative rows summing to one
    t = res.soft_target(5)
    assert (t >= 0).all()
    torch.testing.assert_close(t.sum(1), torch.ones(n))
    e = torch.eye(5)
    torch.testing.assert_close(t, res.lam[:, None] * e[y] + (1 - res.lam[:, None]) * e[y[res.index]])
    # determinism under a seed
    res2 = mixup(x, y, alpha, lam_mode=lam_mode, fold=fold, pairing=pairing, generator=gen(seed))
    assert torch.equal(res.x, res2.x) and torch.equal(res.lam, res2.lam) and torch.equal(res.index, res2.index)

@FAST
@given(b=batches(), lam_mode=st.sampled_from(LAM_MODES))
def test_mixup_identity_index(b, lam_mode):
    x, y, seed = b
    res = mixup(x, y, lam_mode=lam_mode, index=torch.arange(len(x)), generator=gen(seed))
    assert torch.equal(res.x, x)
    assert torch.equal(res.soft_target(5), torch.eye(5)[y])

@FAST
@given(b=batches(min_n=2, dtypes=[torch.float32, torch.float64]), seed=st.integers(0, 2**31 - 1))
def test_mixup_symmetry(b, seed):
    "Sample i mixed with j at λ equals sample j mixed with i at 1-λ, pixelwise and in the target"
    x, y, _ = b
    n, g = len(x), gen(seed)
    index, lam = torch.randperm(n, generator=g), torch.rand(n, generator=g)
    r1 = mixup(x, y, lam=lam, index=index)
    inv, lam2 = torch.empty_like(index), torch.empty_like(lam)
    inv[index], lam2[index] = torch.arange(n), 1 - lam
    r2 = mixup(x, y, lam=lam2, index=inv)
    torch.testing.assert_close(r2.x[index], r1.x, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(r2.soft_target(5)[index], r1.soft_target(5))

@FAST
@given(b=batches(), lam=st.floats(0, 1), per_sample=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_mixup_explicit_lam_index(b, lam, per_sample, seed):
    x, y, _ = b
    n, g = len(x), gen(seed)
    lam = torch.rand(n, generator=g) if per_sample else lam
    index = torch.randperm(n, generator=g)
    res = mixup(x, y, lam=lam, index=index)
    assert torch.equal(res.index, index)
    assert torch.equal(res.lam, torch.as_tensor(lam, dtype=torch.float32).expand(n))
    torch.testing.assert_close(res.x.double(), blend_ref(x, res.lam, index), atol=ATOL[x.dtype], rtol=0)

def test_mixup_any_shape_and_no_labels():
    for shape in [(5,), (5, 7), (5, 2, 3), (5, 1, 2, 3, 4)]:
        x = torch.randn(shape)
        res = mixup(x, None, lam=0.25, index=torch.arange(5).flip(0))
        assert res.y_a is None and res.y_b is None
        torch.testing.assert_close(res.x, 0.25 * x + 0.75 * x.flip(0))

def test_mixup_float_labels_mix():
    x, y = torch.randn(4, 3), torch.softmax(torch.randn(4, 6), 1)
    res = mixup(x, y, lam=torch.tensor([0., .2, .7, 1.]), index=torch.tensor([1, 2, 3, 0]))
    torch.testing.assert_close(res.soft_target(), res.lam[:, None] * y + (1 - res.lam[:, None]) * y[res.index])

X6, Y6 = torch.randn(6, 3, 4, 4), torch.arange(6)
BAD_ARGS = [  # (kwargs, argument the message must name)
    (dict(alpha=0.), 'alpha'), (dict(alpha=-1.), 'alpha'), (dict(alpha=float('nan')), 'alpha'),
    (dict(lam=1.5), 'lam'), (dict(lam=-0.1), 'lam'), (dict(lam=float('nan')), 'lam'),
    (dict(lam=torch.rand(4)), 'lam'), (dict(lam=torch.rand(7)), 'lam'), (dict(lam=torch.rand(6, 1)), 'lam'),
    (dict(lam=torch.tensor([0.5, 1.2, 0, 0, 0, 0])), 'lam'),
    (dict(index=torch.arange(5)), 'index'), (dict(index=torch.arange(7)), 'index'),
    (dict(index=torch.arange(6) + 1), 'index'), (dict(index=torch.arange(6) - 1), 'index'),
    (dict(index=torch.arange(6).float()), 'index'), (dict(index=torch.arange(6)[None]), 'index'),
    (dict(lam_mode='pixel'), 'lam_mode'), (dict(pairing='roll'), 'pairing'), (dict(generator=3), 'generator'),
]

@pytest.mark.parametrize('fn', [mixup, cutmix])
@pytest.mark.parametrize('kwargs,name', BAD_ARGS)
def test_bad_args_name_the_argument(fn, kwargs, name):
    with pytest.raises(ValueError, match=name): fn(X6, Y6, **kwargs)

@pytest.mark.parametrize('fn', [mixup, cutmix])
def test_bad_batches(fn):
    with pytest.raises(ValueError, match=r'\by\b.*labels'): fn(X6, Y6[:5])
    with pytest.raises(ValueError, match='1 label but'): fn(X6, torch.tensor(1))
    with pytest.raises(ValueError, match='floating'): fn(X6.long(), Y6)
    with pytest.raises(ValueError, match='empty'): fn(X6[:0], Y6[:0])
    with pytest.raises(TypeError): fn(X6.numpy(), Y6)

@FAST
@given(lam=st.one_of(st.floats(max_value=-1e-6, allow_nan=False), st.floats(min_value=1 + 1e-6, allow_nan=False)))
def test_lam_outside_unit_interval(lam):
    with pytest.raises(ValueError, match='lam'): mixup(X6, Y6, lam=lam)

# ---------------------------------------------------------------------------------------------- cutmix
def kept(res, x):
    "(N, H, W) map of pixels equal (in every channel) to the first image"
    eq = res.x == x
    return eq.reshape(*eq.shape[:1], -1, *eq.shape[-2:]).all(1)

@FAST
@given(b=batches(min_n=2), alpha=st.sampled_from([0.2, 1., 2.]))
def test_cutmix_batch_one_shared_rectangle(b, alpha):
    x, y, seed = b
    x = distinct(x); x0 = x.clone()
    res = cutmix(x, y, alpha, pairing='derangement', generator=gen(seed))
    n, H, W = len(x), *x.shape[-2:]
    assert torch.equal(x, x0) and res.x is not x
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x).all()
    assert (res.index != torch.arange(n)).all() and torch.equal(res.y_b, y[res.index])
    k = kept(res, x)
    diff = ~k
    ok, area = rect(diff[0])
    assert ok
    assert (diff == diff[0]).all()  # the same box for the whole batch
    # pixels are either the first image's or the partner's, nothing in between
    assert torch.equal(res.x, torch.where(diff[:, None], x[res.index], x))
    assert (res.lam == res.lam[0]).all()
    assert abs(float(res.lam[0]) - (1 - area / (H * W))) < 1e-6
    assert (res.lam - k.double().mean((1, 2))).abs().max() < 1e-6  # λ == share of kept pixels, exactly

@FAST
@given(b=batches(min_n=2), alpha=st.sampled_from([0.2, 1., 2.]))
def test_cutmix_sample_one_rectangle_each(b, alpha):
    x, y, seed = b
    x = distinct(x); x0 = x.clone()
    res = cutmix(x, y, alpha, lam_mode='sample', pairing='derangement', generator=gen(seed))
    assert torch.equal(x, x0) and res.x.dtype == x.dtype and res.x.shape == x.shape
    k = kept(res, x)
    for i in range(len(x)): assert rect(~k[i])[0]
    assert torch.equal(res.x, torch.where(~k[:, None], x[res.index], x))
    assert (res.lam - k.double().mean((1, 2))).abs().max() < 1e-6

@FAST
@given(lam=st.floats(0, 1), H=st.integers(1, 40), W=st.integers(1, 40), seed=st.integers(0, 2**31 - 1))
def test_cutmix_boxes_area_and_bounds(lam, H, W, seed):
    "The box is inside the image, at most floor(H·√(1-λ₀)) × floor(W·√(1-λ₀)), so the corrected λ ≥ λ₀"
    lam0 = torch.tensor([lam], dtype=torch.float32)
    b = cutmix_boxes(lam0, H, W, gen(seed))
    assert b.shape == (1, 4) and b.dtype == torch.long
    y1, y2, x1, x2 = b[0].tolist()
    assert 0 <= y1 <= y2 <= H and 0 <= x1 <= x2 <= W
    r = (1 - float(lam0)) ** 0.5
    assert y2 - y1 <= int(H * r + 1e-6) and x2 - x1 <= int(W * r + 1e-6)
    assert 1 - (y2 - y1) * (x2 - x1) / (H * W) >= float(lam0) - 1e-6

@FAST
@given(b=batches(), lam_mode=st.sampled_from(LAM_MODES), alpha=st.sampled_from([0.2, 1., 2.]))
def test_cutmix_corrected_lam_not_below_sampled(b, lam_mode, alpha):
    x, y, seed = b
    r0 = cutmix(x, y, alpha, lam_mode=lam_mode, correct_lam=False, generator=gen(seed))
    r1 = cutmix(x, y, alpha, lam_mode=lam_mode, correct_lam=True, generator=gen(seed))
    assert torch.equal(r0.x, r1.x) and torch.equal(r0.index, r1.index)  # same draws
    assert (r1.lam >= r0.lam - 1e-6).all()
    lam0 = sample_lam(alpha, len(x) if lam_mode == 'sample' else 1, generator=gen(seed))
    assert torch.equal(r0.lam, lam0.expand(len(x)))

def test_cutmix_mean_corrected_lam():
    "32×32, α=1: mean sampled λ₀ 0.5, mean corrected λ ≈ 0.69 (OpenMixup's simulation: ≈ 0.70)"
    g = gen(0)
    lam0 = sample_lam(1., 20000, generator=g)
    b = cutmix_boxes(lam0, 32, 32, g)
    lam = 1 - ((b[:, 1] - b[:, 0]) * (b[:, 3] - b[:, 2])).double() / 1024
    assert abs(lam0.double().mean() - 0.5) < 0.01 and 0.66 < lam.mean() < 0.72

@FAST
@given(b=batches(min_n=2), lam_mode=st.sampled_from(LAM_MODES))
def test_cutmix_return_mask(b, lam_mode):
    x, y, seed = b
    x = distinct(x)
    res = cutmix(x, y, lam_mode=lam_mode, pairing='derangement', return_mask=True, generator=gen(seed))
    n, H, W = len(x), *x.shape[-2:]
    m = res.mask
    assert m is not None and m.dtype == torch.float32 and m.shape in [(1, 1, H, W), (n, 1, H, W)]
    if lam_mode == 'sample' and n > 1: assert m.shape == (n, 1, H, W)
    assert ((m == 0) | (m == 1)).all()
    assert torch.equal(m.expand(n, 1, H, W)[:, 0].bool(), kept(res, x))  # mask == kept-pixel map
    torch.testing.assert_close(m.expand(n, 1, H, W).mean((1, 2, 3)), res.lam)
    assert torch.equal(res.x, (m * x.float() + (1 - m) * x[res.index].float()).to(x.dtype))
    assert cutmix(x, y, generator=gen(seed)).mask is None

@FAST
@given(b=batches(), lam_mode=st.sampled_from(LAM_MODES))
def test_cutmix_inplace(b, lam_mode):
    x, y, seed = b
    x0 = x.clone()
    ref = cutmix(x, y, lam_mode=lam_mode, generator=gen(seed))
    assert torch.equal(x, x0) and ref.x is not x
    res = cutmix(x, y, lam_mode=lam_mode, inplace=True, generator=gen(seed))
    assert res.x is x and torch.equal(x, ref.x) and torch.equal(res.lam, ref.lam)

@FAST
@given(b=batches(min_n=2), data=st.data())
def test_cutmix_explicit_box(b, data):
    x, y, seed = b
    x = distinct(x)
    n, H, W = len(x), *x.shape[-2:]
    y1, y2 = sorted(data.draw(st.lists(st.integers(0, H), min_size=2, max_size=2)))
    x1, x2 = sorted(data.draw(st.lists(st.integers(0, W), min_size=2, max_size=2)))
    index = partner_index(n, 'derangement', gen(seed))
    res = cutmix(x, y, box=(y1, y2, x1, x2), index=index)
    diff = torch.zeros(H, W, dtype=torch.bool); diff[y1:y2, x1:x2] = True
    assert torch.equal(~kept(res, x), diff.expand(n, H, W))
    torch.testing.assert_close(res.lam, torch.full((n,), 1 - (y2 - y1) * (x2 - x1) / (H * W)))
    # one box per sample
    boxes = torch.stack([cutmix_boxes(torch.rand(1, generator=gen(seed + i)), H, W, gen(seed + i))[0] for i in range(n)])
    res = cutmix(x, y, box=boxes, index=index)
    for i, (a, bb, c, d) in enumerate(boxes.tolist()):
        diff = torch.zeros(H, W, dtype=torch.bool); diff[a:bb, c:d] = True
        assert torch.equal(~kept(res, x)[i], diff)
        assert abs(float(res.lam[i]) - (1 - (bb - a) * (d - c) / (H * W))) < 1e-6

def test_cutmix_box_validation():
    x, y = torch.randn(4, 3, 6, 8), torch.arange(4)
    for box in [(3, 2, 0, 4), (0, 7, 0, 4), (0, 4, 5, 2), (0, 4, 0, 9), (-1, 2, 0, 4), (0, 4, -3, 2),
                torch.zeros(3, 4, dtype=torch.long), torch.zeros(5, 4, dtype=torch.long),
                torch.tensor([[0, 2, 0, 2]] * 3 + [[0, 7, 0, 2]])]:
        with pytest.raises(ValueError, match='box'): cutmix(x, y, box=box)
    with pytest.raises(ValueError, match='lam or box'): cutmix(x, y, lam=0.5, box=(0, 2, 0, 2))
    with pytest.raises(ValueError, match='dimensions'): cutmix(torch.randn(4, 5), y)

@pytest.mark.parametrize('box', [(0, 1, 2), (0, 1, 2, 3, 4), (0, 2, 0, 2, 1, 3, 1, 3), 'bad3d'])
def test_cutmix_box_bad_shape(box):
    x, y = torch.randn(2, 3, 6, 8), torch.arange(2)
    if box == 'bad3d': box = torch.zeros(2, 2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match='box'): cutmix(x, y, box=box)

def test_cutmix_identity_and_small_batches():
    x, y = torch.randn(1, 1, 5, 3), torch.tensor([2])  # N=1: the only partner is itself
    for lam_mode in LAM_MODES:
        res = cutmix(x, y, lam_mode=lam_mode)
        assert torch.equal(res.x, x) and torch.equal(res.soft_target(3), torch.eye(3)[y])
    x = distinct(torch.randn(2, 1, 7, 5))  # N=2 derangement: the two swap boxes
    res = cutmix(x, torch.arange(2), lam=0.3, pairing='derangement', generator=gen(0))
    assert torch.equal(res.index, torch.tensor([1, 0]))
    k = kept(res, x)
    assert torch.equal(k[0], k[1]) and abs(float(res.lam[0]) - float(k[0].double().mean())) < 1e-6
    x = torch.randn(5, 2, 4, 6)
    res = cutmix(x, torch.arange(5), index=torch.arange(5), lam_mode='sample')
    assert torch.equal(res.x, x)

def test_cutmix_three_dim_input():
    "(N, H, W) inputs: the box acts on the last two axes"
    x = distinct(torch.randn(3, 5, 7))
    res = cutmix(x, None, box=(1, 4, 2, 7), index=torch.tensor([1, 2, 0]), return_mask=True)
    assert torch.equal(res.x[:, 1:4, 2:7], x[[1, 2, 0]][:, 1:4, 2:7])
    m = torch.ones(5, 7); m[1:4, 2:7] = 0
    assert torch.equal(res.x[:, m.bool()], x[:, m.bool()])
    torch.testing.assert_close(res.lam, torch.full((3,), float(m.mean())))

def test_cutmix_deterministic_and_global_rng():
    x, y = torch.randn(8, 3, 9, 7), torch.arange(8)
    for lam_mode in LAM_MODES:
        a, b = (cutmix(x, y, lam_mode=lam_mode, generator=gen(5)) for _ in range(2))
        assert torch.equal(a.x, b.x) and torch.equal(a.lam, b.lam)
        torch.manual_seed(3); a = cutmix(x, y, lam_mode=lam_mode)
        torch.manual_seed(3); b = cutmix(x, y, lam_mode=lam_mode)
        assert torch.equal(a.x, b.x) and torch.equal(a.index, b.index)

# ---------------------------------------------------------------------------------------------- callbacks
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.callback.schedule import *  # noqa: F401,F403  lr_find
from fastai.losses import CrossEntropyLossFlat
from fastai.optimizer import SGD
from fastai.torch_core import set_seed

def tiny_learner(tmp_path, cbs=None):
    set_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(192, 3))
    learn = Learner(synth_dls(), model, loss_func=CrossEntropyLossFlat(), opt_func=SGD, lr=0.1, cbs=cbs, path=tmp_path)
    learn.no_logging(); learn.no_bar()
    return learn

def fit(learn, n=1):
    with learn.no_logging(), learn.no_bar(): learn.fit(n, 0.1)

def weights(learn): return torch.cat([p.detach().flatten().clone() for p in learn.model.parameters()])

class Probe(Callback):
    "Records, for each batch, whether it was mixed, which input the model saw and the loss it was trained on"
    order = 10
    def __init__(self): self.log = []
    def after_loss(self):
        mcb = next((c for c in self.learn.cbs if isinstance(c, MixCallback)), None)
        res = None if mcb is None else mcb.res
        entry = dict(training=self.training, mixed=res is not None, lf=self.learn.loss_func)
        if res is not None:
            entry['x_is_mixed'] = torch.equal(self.learn.xb[0], res.x)  # fastai's CastToTensor re-wraps xb
            entry['ref_loss'] = res.loss(self.learn.pred.detach(), mcb.old_lf).item()
        entry['loss'] = self.learn.loss.item()
        self.log.append(entry)

@pytest.mark.parametrize('cb', [lambda: MixupCallback(), lambda: CutMixCallback(), lambda: MixupCallback(lam_mode='sample', fold=True),
                                lambda: CutMixCallback(lam_mode='sample', pairing='derangement')])
def test_callback_mixes_training_only_and_restores_loss(tmp_path, cb):
    probe = Probe()
    learn = tiny_learner(tmp_path, cbs=[cb(), probe])
    lf = learn.loss_func
    fit(learn, 1)
    assert learn.loss_func is lf
    tr = [e for e in probe.log if e['training']]; va = [e for e in probe.log if not e['training']]
    assert len(tr) == 8 and len(va) == 2
    assert all(e['mixed'] and e['x_is_mixed'] for e in tr)  # p=1: every training batch
    assert all(isinstance(e['lf'], MixedLoss) and e['lf'].loss_func is lf for e in tr)
    assert all(abs(e['loss'] - e['ref_loss']) < 1e-5 for e in tr)  # trained on the mixed loss
    assert not any(e['mixed'] for e in va) and all(e['lf'] is lf for e in va)

def test_callback_restores_after_lr_find(tmp_path):
    learn = tiny_learner(tmp_path, cbs=MixupCallback())
    lf = learn.loss_func
    with learn.no_logging(), learn.no_bar(): learn.lr_find(num_it=12, show_plot=False)
    assert learn.loss_func is lf

class Boom(Callback):
    def __init__(self, at): self.at, self.n = at, 0
    def after_loss(self):
        if self.training:
            self.n += 1
            if self.n == self.at: raise RuntimeError('boom')

def test_callback_recovers_after_exception(tmp_path):
    probe = Probe()
    learn = tiny_learner(tmp_path, cbs=[MixupCallback(), probe])
    lf = learn.loss_func
    learn.add_cb(Boom(3))
    with pytest.raises(RuntimeError, match='boom'): fit(learn, 1)
    learn.remove_cb(learn.boom)
    probe.log.clear()
    fit(learn, 1)
    assert learn.loss_func is lf
    tr = [e for e in probe.log if e['training']]
    assert tr and all(e['lf'].loss_func is lf for e in tr)  # no wrapper around a stale wrapper
    assert all(e['mixed'] for e in tr)

def test_callback_get_preds_and_validate_unaffected(tmp_path):
    learn = tiny_learner(tmp_path, cbs=CutMixCallback())
    lf = learn.loss_func
    fit(learn, 1)
    plain = tiny_learner(tmp_path)
    plain.model.load_state_dict(learn.model.state_dict())
    p1, t1 = learn.get_preds(); p2, t2 = plain.get_preds()
    assert torch.equal(p1, p2) and torch.equal(t1, t2)
    v1, v2 = learn.validate(), plain.validate()
    assert v1[0] == pytest.approx(v2[0], abs=1e-6)
    assert learn.loss_func is lf

@pytest.mark.parametrize('cls', [MixupCallback, CutMixCallback])
def test_callback_p0_is_plain_training(tmp_path, cls):
    plain = tiny_learner(tmp_path); fit(plain, 1)
    probe = Probe()
    learn = tiny_learner(tmp_path, cbs=[cls(p=0.), probe]); fit(learn, 1)
    assert not any(e['mixed'] for e in probe.log)
    assert torch.equal(weights(learn), weights(plain))
    mixed = tiny_learner(tmp_path, cbs=cls(p=1.)); fit(mixed, 1)
    assert not torch.equal(weights(mixed), weights(plain))  # the comparison can fail

def test_callback_p_between(tmp_path):
    torch.manual_seed(0)
    probe = Probe()
    learn = tiny_learner(tmp_path, cbs=[MixupCallback(p=0.5), probe]); fit(learn, 3)
    k = sum(e['mixed'] for e in probe.log if e['training'])
    assert 0 < k < 24

def test_callback_bad_args():
    with pytest.raises(ValueError, match='p must'): MixupCallback(p=1.5)
    with pytest.raises(ValueError, match='alpha'): CutMixCallback(alpha=0)
    with pytest.raises(ValueError, match='lam_mode'): MixupCallback(lam_mode='x')
    with pytest.raises(ValueError, match='pairing'): CutMixCallback(pairing='x')
