"Property tests of GuidedMixup: the smoothing, both saliencies, the greedy one-cycle pairing, the saliency-ratio mask and `GuidedMixupCallback`."
import sys
from pathlib import Path
import pytest
import torch
import torchvision.transforms.functional as TF
from torch import nn
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.guidedmix import smooth_saliency, guided_saliency, greedy_pairing, guidedmix, GuidedMixupCallback
from openmixup_nb.saliency import gradient_saliency
from openmixup_nb.callback import synth_dls
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.losses import CrossEntropyLossFlat
from fastai.torch_core import TensorImage, TensorCategory
import fastai.callback.progress  # noqa: F401  Learner.no_bar

FAST = settings(max_examples=25, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

from _helpers import gen, distinct, _seed, _one_thread  # noqa: F401  (autouse fixtures)

@st.composite
def batches(draw, min_n=1, max_n=8, min_side=1, max_side=12, dtypes=DTYPES):
    "An image batch (N, C, H, W) with odd / non-square sizes, 1..4 channels, a dtype, int labels and saliency maps"
    n, c = draw(st.integers(min_n, max_n)), draw(st.integers(1, 4))
    h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    # peaked maps with exact zeros in places (both-zero pixels exercise the ½ guard)
    sal = (torch.rand(n, h, w, generator=g) - 0.3).clamp_min(0) ** 2
    return x, torch.randint(0, 5, (n,), generator=g), sal, seed

def cycle_length(index):
    i, k = int(index[0]), 1
    while i != 0: i, k = int(index[i]), k + 1
    return k

# ------------------------------------------------------------------------------------------ greedy pairing
def reference_greedy(D):
    "The greedy one-cycle cover in pure Python, step by step as the paper describes it (ties: lowest index)"
    n = len(D)
    if n == 1: return [0]
    best, start, nxt = None, None, None
    for i in range(n):  # 1. the most distant pair, row-major first
        for j in range(n):
            if i != j and (best is None or D[i][j] > best): best, start, nxt = D[i][j], i, j
    index, in_cycle = [None] * n, {start}
    index[start] = nxt
    cur = nxt
    while len(in_cycle) < n - 1:  # 2. link to the farthest image not yet in the cycle
        in_cycle.add(cur)
        best, pick = None, None
        for j in range(n):
            if j not in in_cycle and (best is None or D[cur][j] > best): best, pick = D[cur][j], j
        index[cur], cur = pick, pick
    index[cur] = start  # 3. close the cycle
    return index

@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 14), seed=st.integers(0, 2**31 - 1), kind=st.sampled_from(['float', 'ties', 'symmetric', 'saliency']))
def test_greedy_matches_reference(n, seed, kind):
    g = gen(seed)
    if kind == 'float': D = torch.rand(n, n, generator=g)
    elif kind == 'ties': D = torch.randint(0, 3, (n, n), generator=g).float()  # many equal values
    elif kind == 'symmetric': D = torch.rand(n, n, generator=g); D = D + D.T
    else:
        s = smooth_saliency(torch.rand(n, 6, 6, generator=g)).flatten(1)
        D = torch.cdist(s, s)
    assert greedy_pairing(D).tolist() == reference_greedy(D.double().tolist())

@FAST
@given(n=st.integers(2, 64), seed=st.integers(0, 2**31 - 1), dtype=st.sampled_from([torch.float32, torch.float64, torch.int64, torch.float16]))
def test_greedy_is_one_cycle(n, seed, dtype):
    D = (torch.rand(n, n, generator=gen(seed)) * 100).to(dtype)
    idx = greedy_pairing(D)
    assert idx.dtype == torch.long and idx.device.type == 'cpu'
    assert sorted(idx.tolist()) == list(range(n))  # a permutation
    assert (idx != torch.arange(n)).all()  # no fixed point
    assert cycle_length(idx) == n  # one cycle covering every image
    assert torch.equal(D, (torch.rand(n, n, generator=gen(seed)) * 100).to(dtype))  # the input is not modified

def test_greedy_starts_with_the_most_distant_pair():
    D = torch.rand(20, 20, generator=gen(1)); D.fill_diagonal_(0)
    i, j = divmod(int(D.argmax()), 20)
    assert int(greedy_pairing(D)[i]) == j
    assert greedy_pairing(torch.zeros(1, 1)).tolist() == [0] and greedy_pairing(torch.rand(2, 2)).tolist() == [1, 0]

def test_greedy_errors():
    for bad in (torch.rand(3, 4), torch.rand(3), torch.zeros(0, 0), torch.rand(2, 2) > 0.5, [[0., 1.], [1., 0.]]):
        with pytest.raises(ValueError, match='square matrix'): greedy_pairing(bad)
    for v in (float('nan'), float('inf'), -float('inf')):
        with pytest.raises(ValueError, match='finite'): greedy_pairing(torch.tensor([[0., v], [1., 0.]]))
    with pytest.raises(ValueError, match='meta'): greedy_pairing(torch.rand(3, 3, device='meta'))

# ------------------------------------------------------------------------------------------ smoothing
@FAST
@given(n=st.integers(1, 4), h=st.integers(4, 30), w=st.integers(4, 30), size=st.sampled_from([1, 3, 5, 7, 9]),
       sigma=st.floats(0.3, 6.), seed=st.integers(0, 2**31 - 1))
def test_smoothing_is_torchvision_blur_normalised(n, h, w, size, sigma, seed):
    s = torch.rand(n, h, w, generator=gen(seed)) * 7
    out = smooth_saliency(s, size, sigma)
    ref = s / s.sum((1, 2), keepdim=True)
    if size > 1 and min(h, w) > size // 2: ref = TF.gaussian_blur(ref[:, None], [size, size], [sigma, sigma])[:, 0]
    if size > 1 and min(h, w) <= size // 2: return  # torchvision cannot reflect-pad such a map: covered below
    torch.testing.assert_close(out, ref / ref.sum((1, 2), keepdim=True), atol=1e-7, rtol=1e-5)

@FAST
@given(b=batches(max_side=6, dtypes=[torch.float32]), size=st.sampled_from([3, 7, 11]))
def test_smoothing_any_size(b, size):
    "Maps smaller than the kernel (down to 1×1): finite, non-negative, each summing to 1; a constant map stays constant"
    _, _, sal, _ = b
    out = smooth_saliency(sal, size)
    assert out.shape == sal.shape and out.dtype == torch.float32 and torch.isfinite(out).all() and (out >= 0).all()
    torch.testing.assert_close(out.sum((1, 2)), torch.ones(len(sal)))
    flat = smooth_saliency(torch.ones_like(sal), size)
    torch.testing.assert_close(flat, torch.full_like(flat, 1 / sal[0].numel()))

def test_smoothing_invalid_maps_become_uniform():
    s = torch.rand(6, 5, 5, generator=gen(0))
    s[0] = 0; s[1, 1, 1] = float('nan'); s[2, 0, 0] = float('inf'); s[3, 4, 4] = -1e-3; s[4] = 1e38  # overflows in the sum
    out = smooth_saliency(s)
    assert torch.equal(out[:5], torch.full((5, 5, 5), 1 / 25))
    torch.testing.assert_close(out[5], smooth_saliency(s[5:])[0])

def test_smoothing_errors():
    with pytest.raises(ValueError, match=r'\(N, H, W\)'): smooth_saliency(torch.rand(2, 1, 4, 4))
    with pytest.raises(ValueError, match=r'\(N, H, W\)'): smooth_saliency(torch.rand(4, 4) > 0.5)
    for size in (0, 2, 4.0, True):
        with pytest.raises(ValueError, match='size'): smooth_saliency(torch.rand(2, 4, 4), size=size)
    for sigma in (0, -1., float('nan'), float('inf'), '3'):
        with pytest.raises(ValueError, match='sigma'): smooth_saliency(torch.rand(2, 4, 4), sigma=sigma)

# ------------------------------------------------------------------------------------------ saliency
def test_sr_saliency_finds_the_blob():
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing='ij')
    for k, (cy, cx) in enumerate([(8, 9), (22, 14), (16, 25)]):
        img = 0.1 * torch.randn(1, 3, 32, 32, generator=gen(k)) + 3 * torch.exp(-((yy - cy)**2 + (xx - cx)**2) / 8.)
        s = guided_saliency(img, guided_type='sr')
        p = int(s.flatten().argmax())
        assert abs(p // 32 - cy) <= 1 and abs(p % 32 - cx) <= 1
        torch.testing.assert_close(s.sum(), torch.tensor(1.))
        torch.testing.assert_close(guided_saliency(4 * img, guided_type='sr'), s, atol=1e-6, rtol=1e-4)  # scale-free

@FAST
@given(b=batches(min_side=2), soft=st.booleans())
def test_ap_saliency_is_the_models_smoothed(b, soft):
    x, y, _, seed = b
    torch.manual_seed(seed % 1000)
    x = x.float(); n, c, h, w = x.shape
    lin = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, 5))
    yy = torch.nn.functional.one_hot(y, 5).float() if soft else y
    s = guided_saliency(x, yy, lin, 'ap')
    torch.testing.assert_close(s, smooth_saliency(gradient_saliency(lin, x, yy)), atol=1e-7, rtol=1e-5)
    if not soft: assert torch.equal(guided_saliency(x, y[:, None], lin), s)  # fastai's (N, 1) labels

def test_saliency_errors():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(192, 5))
    with pytest.raises(ValueError, match='guided_type'): guided_saliency(x, y, lin, 'cam')
    with pytest.raises(ValueError, match='needs the model'): guided_saliency(x, y)
    with pytest.raises(ValueError, match='needs the labels'): guided_saliency(x, None, lin)
    with pytest.raises(ValueError, match='labels'): guided_saliency(x, y[:3], lin)
    with pytest.raises(ValueError, match='floating-point'): guided_saliency(x.byte(), guided_type='sr')
    with pytest.raises(ValueError, match='dimensions'): guided_saliency(x[0], guided_type='sr')
    with pytest.raises(ValueError, match=r'\(N, C, H, W\)'): guided_saliency(x[None], guided_type='sr')
    with pytest.raises(ValueError, match='empty'): guided_saliency(x[:0], guided_type='sr')
    with pytest.raises(TypeError, match='torch.Tensor'): guided_saliency(x.tolist(), guided_type='sr')
    with pytest.raises(ValueError, match='size'): guided_saliency(x, guided_type='sr', size=6)
    with pytest.raises(ValueError, match='x is on meta'): guided_saliency(x.to('meta'), y.to('meta'), lin)

# ------------------------------------------------------------------------------------------ guidedmix
@FAST
@given(b=batches(), pairing=st.sampled_from(['greedy', 'random']))
def test_mask_invariants(b, pairing):
    x, y, sal, seed = b
    x = distinct(x); x0 = x.clone()
    res = guidedmix(x, y, sal, pairing, generator=gen(seed))
    n = len(x)
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x.float()).all()
    assert torch.equal(x, x0)  # not in place
    m = res.mask
    assert m.shape == (n, 1, *x.shape[-2:]) and m.dtype == torch.float32
    assert ((m >= 0) & (m <= 1)).all()  # M in [0, 1]
    assert res.lam.shape == (n,) and res.lam.dtype == torch.float32
    torch.testing.assert_close(res.lam, m.mean((1, 2, 3)), atol=1e-6, rtol=0)  # λ == mean(M)
    assert torch.equal(res.y_a, y) and torch.equal(res.y_b, y[res.index]) and res.lam_b is None
    # the blend, in x's precision: M·x + (1-M)·x[index]
    ref = (m.double() * x.double() + (1 - m.double()) * x.double()[res.index]).to(x.dtype)
    tol = {torch.float16: 1e-2, torch.bfloat16: 1e-1}.get(x.dtype, 1e-5)
    torch.testing.assert_close(res.x.double(), ref.double(), atol=tol * (1 + n), rtol=tol)
    # the mask is the saliency ratio of the normalised maps, ½ where both vanish
    s = res.extra['saliency']
    torch.testing.assert_close(s.sum((1, 2)), torch.ones(n))
    sa, sb = s, s[res.index]
    want = torch.where(sa + sb > 0, sa / (sa + sb), torch.full_like(sa, 0.5))
    if x.dtype in (torch.float32, torch.float64): torch.testing.assert_close(m[:, 0], want, atol=1e-6, rtol=0)
    # the other order of every pair: M(a, b) + M(b, a) == 1 at every pixel
    back = guidedmix(x.float(), y, sal, index=torch.argsort(res.index))
    torch.testing.assert_close(guidedmix(x.float(), y, sal, index=res.index).mask + back.mask[res.index],
                               torch.ones_like(m), atol=1e-6, rtol=0)
    if pairing == 'greedy' and n >= 2: assert cycle_length(res.index) == n and (res.index != torch.arange(n)).all()

@FAST
@given(b=batches(min_n=2, dtypes=[torch.float32]))
def test_greedy_partner_is_used(b):
    "The greedy pairing decides the partner of the images and the labels (OpenMixup computes it and mixes with a random one)"
    x, y, sal, _ = b
    res = guidedmix(x, y, sal)
    s = smooth_saliency(sal, size=1).flatten(1)  # normalised only
    assert torch.equal(res.index, greedy_pairing(torch.cdist(s, s)))
    assert torch.equal(res.y_b, y[res.index])

@FAST
@given(b=batches())
def test_identical_maps_give_half(b):
    x, y, sal, seed = b
    same = sal[:1].expand_as(sal).clone()
    for pairing in ('greedy', 'random'):
        res = guidedmix(x, y, same, pairing, generator=gen(seed))
        assert torch.equal(res.mask, torch.full_like(res.mask, 0.5)) and torch.equal(res.lam, torch.full((len(x),), 0.5))
    # one's own partner: M = ½ blends the image with itself, exactly
    assert torch.equal(guidedmix(x, y, sal, index=torch.arange(len(x))).x, x)
    zero = guidedmix(x, y, torch.zeros_like(sal))  # no information anywhere: uniform maps, M = ½
    assert torch.equal(zero.mask, torch.full_like(zero.mask, 0.5))

def test_non_finite_and_negative_maps():
    x, y = torch.randn(4, 3, 6, 6), torch.arange(4)
    sal = torch.rand(4, 6, 6, generator=gen(0))
    bad = sal.clone(); bad[0, 1, 1] = float('nan'); bad[1, 2, 2] = -1.
    res = guidedmix(x, y, bad, index=torch.tensor([1, 0, 3, 2]))
    assert torch.isfinite(res.x).all() and torch.isfinite(res.mask).all()
    assert torch.equal(res.mask[:2], torch.full_like(res.mask[:2], 0.5))  # both maps of the pair uniform
    u = torch.full((6, 6), 1 / 36); s2 = sal[2] / sal[2].sum()
    torch.testing.assert_close(guidedmix(x, y, bad, index=torch.tensor([2, 0, 0, 2])).mask[0, 0], u / (u + s2))

@FAST
@given(b=batches(), pairing=st.sampled_from(['greedy', 'random']))
def test_inplace_seeded_and_input_kinds(b, pairing):
    x, y, sal, seed = b
    ref = guidedmix(x, y, sal, pairing, generator=gen(seed))
    xc = x.clone()
    out = guidedmix(xc, y, sal, pairing, generator=gen(seed), inplace=True)
    assert out.x is xc and torch.equal(out.x, ref.x) and torch.equal(out.lam, ref.lam)
    again = guidedmix(x, y, sal, pairing, generator=gen(seed))
    assert torch.equal(again.x, ref.x) and torch.equal(again.index, ref.index)
    # (N, 1, H, W) maps, fastai's tensor types, no labels, one-hot labels
    assert torch.equal(guidedmix(x, y, sal[:, None], pairing, generator=gen(seed)).x, ref.x)
    assert torch.equal(guidedmix(x.as_subclass(TensorImage), y.as_subclass(TensorCategory), sal, pairing, generator=gen(seed)).x, ref.x)
    assert guidedmix(x, None, sal, pairing, generator=gen(seed)).y_b is None
    oh = torch.nn.functional.one_hot(y, 5).float()
    t = guidedmix(x, oh, sal, pairing, generator=gen(seed)).soft_target()
    torch.testing.assert_close(t.sum(1), torch.ones(len(x)))

def test_gradient_flows_to_the_images_not_the_saliency():
    x = torch.randn(4, 3, 8, 8, requires_grad=True)
    sal = torch.rand(4, 8, 8, requires_grad=True)
    res = guidedmix(x, torch.arange(4), sal)
    res.x.sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and sal.grad is None and not res.mask.requires_grad

def test_meta_device():
    x, y, sal = torch.randn(4, 3, 8, 8, device='meta'), torch.arange(4, device='meta'), torch.rand(4, 8, 8, device='meta')
    with pytest.raises(ValueError, match='meta'): guidedmix(x, y, sal)
    res = guidedmix(x, y, sal, 'random')
    assert res.x.shape == x.shape and res.lam.shape == (4,) and res.mask.shape == (4, 1, 8, 8)

def test_errors():
    x, y, sal = torch.randn(4, 3, 8, 8), torch.arange(4), torch.rand(4, 8, 8)
    with pytest.raises(ValueError, match='dimensions'): guidedmix(torch.randn(4, 8, 8), y, sal)
    with pytest.raises(ValueError, match=r'\(N, C, H, W\)'): guidedmix(x[:, None], y, sal)
    with pytest.raises(ValueError, match='labels'): guidedmix(x, torch.arange(3), sal)
    with pytest.raises(ValueError, match='floating-point'): guidedmix(x.byte(), y, sal)
    with pytest.raises(TypeError, match='saliency must be a torch.Tensor'): guidedmix(x, y, sal.numpy())
    for bad in (sal[:3], sal[:, :7], sal[:, None].expand(-1, 2, -1, -1), sal > 0.5, sal.to(torch.complex64)):
        with pytest.raises(ValueError, match=r'saliency must be real maps \(4, 8, 8\)'): guidedmix(x, y, bad)
    with pytest.raises(ValueError, match='saliency is on meta'): guidedmix(x, y, sal.to('meta'))
    with pytest.raises(ValueError, match='pairing'): guidedmix(x, y, sal, pairing='perm')
    with pytest.raises(ValueError, match='index'): guidedmix(x, y, sal, index=torch.tensor([0, 1, 2, 9]))
    with pytest.raises(ValueError, match='index'): guidedmix(x, y, sal, index=torch.arange(4.))
    with pytest.raises(ValueError, match='generator'): guidedmix(x, y, sal, 'random', generator=1)
    with pytest.raises(ValueError, match='inplace'): guidedmix(x, y, sal, inplace=1)
    with pytest.raises(TypeError): guidedmix(x, y, sal, alpha=1.)  # there is no α: the saliency sets the ratio

# ------------------------------------------------------------------------------------------ callback
def _bn_net():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 3))

class _Snap(Callback):
    "Before the mixing: gradients held, BatchNorm in eval mode on purpose, the model's state and the clean batch"
    order = -1
    def before_batch(self):
        if not self.training: return
        m = self.learn.model
        for p in m.parameters(): p.grad = torch.randn_like(p)
        m[1].eval()
        self.snap = ({k: v.clone() for k, v in m.state_dict().items()}, [p.grad.clone() for p in m.parameters()],
                     [l.training for l in m.modules()], [p.clone() for p in m.parameters()], self.x.clone(), self.y.clone())

class _Check(Callback):
    "After the mixing: the model exactly as it was, and the saliency that of the current model on the clean batch"
    order = 1
    def __init__(self): self.n = 0
    def before_batch(self):
        if not self.training: return
        m = self.learn.model
        state, grads, flags, params, x0, y0 = self.learn._snap.snap
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items())  # incl. BatchNorm statistics
        assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), grads))
        assert all(torch.equal(p, q) for p, q in zip(m.parameters(), params))
        assert [l.training for l in m.modules()] == flags
        cb = self.learn.guided_mixup
        torch.testing.assert_close(cb.res.extra['saliency'], guided_saliency(x0, y0, m), atol=1e-7, rtol=1e-5)
        assert not torch.equal(self.x, x0)
        for p in m.parameters(): p.grad = None
        m[1].train(); self.n += 1

def test_ap_pass_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    learn = Learner(synth_dls(), _bn_net(), loss_func=CrossEntropyLossFlat(), cbs=[_Snap(), GuidedMixupCallback(), _Check()])
    with learn.no_bar(), learn.no_logging(): learn.fit(2, 0.01)
    assert learn._check.n == 2 * len(learn.dls.train)

def test_ap_saliency_tracks_the_current_model():
    "The maps of step k come from the model after step k-1: a model trained by other means gives other maps"
    torch.manual_seed(0)
    cb = GuidedMixupCallback()
    learn = Learner(synth_dls(), _bn_net(), loss_func=CrossEntropyLossFlat(), cbs=cb)
    b = learn.dls.one_batch(); x0 = b[0].clone()
    learn._split(b); learn.training = True
    cb('before_train'); cb('before_batch'); s1 = cb.res.extra['saliency'].clone(); cb('after_train')
    with torch.no_grad():
        for p in learn.model.parameters(): p.add_(torch.randn_like(p))
    learn._split((x0.clone(), b[1])); cb('before_train'); cb('before_batch')
    assert not torch.allclose(cb.res.extra['saliency'], s1)
    torch.testing.assert_close(cb.res.extra['saliency'], guided_saliency(x0, b[1], learn.model))
    cb('after_train')

@pytest.mark.parametrize('kw', [{}, {'guided_type': 'sr'}, {'pairing': 'random'}, {'guided_type': 'sr', 'p': 0.5},
                                {'size': 3, 'sigma': 1.}])
def test_callback_trains_and_restores_loss(kw):
    torch.manual_seed(0)
    lf = CrossEntropyLossFlat()
    learn = Learner(synth_dls(), _bn_net(), loss_func=lf, cbs=GuidedMixupCallback(**kw))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.05)
    assert learn.loss_func is lf
    assert all(torch.isfinite(torch.tensor(v)).all() for v in learn.recorder.values[-1])

@pytest.mark.parametrize('guided_type', ['ap', 'sr'])
def test_callback_mixes_the_batch(guided_type):
    torch.manual_seed(0)
    cb = GuidedMixupCallback(guided_type)
    learn = Learner(synth_dls(), _bn_net(), loss_func=CrossEntropyLossFlat(), cbs=cb)
    b = learn.dls.one_batch(); x0 = b[0].clone()
    learn._split(b); learn.training = True
    cb('before_train'); cb('before_batch')
    s = guided_saliency(x0, b[1], learn.model, guided_type)
    ref = guidedmix(x0, b[1], s)
    assert torch.equal(learn.x, ref.x) and torch.equal(cb.res.lam, ref.lam) and torch.equal(cb.res.index, ref.index)
    # the loss trained on is the per-sample mixed loss
    pred = learn.model(learn.x)
    per = torch.nn.functional.cross_entropy(pred, ref.y_a, reduction='none') * ref.lam + \
          torch.nn.functional.cross_entropy(pred, ref.y_b, reduction='none') * (1 - ref.lam)
    torch.testing.assert_close(learn.loss_func(pred, b[1]), per.mean())
    cb('after_train')

def test_callback_errors():
    with pytest.raises(ValueError, match='guided_type'): GuidedMixupCallback(guided_type='grad')
    with pytest.raises(ValueError, match='pairing'): GuidedMixupCallback(pairing='derangement')
    with pytest.raises(ValueError, match='size'): GuidedMixupCallback(size=2)
    with pytest.raises(ValueError, match='sigma'): GuidedMixupCallback(sigma=0)
    with pytest.raises(ValueError, match='p must'): GuidedMixupCallback(p=1.5)
    with pytest.raises(ValueError, match='generator'): GuidedMixupCallback(generator='g')
    with pytest.raises(TypeError): GuidedMixupCallback(alpha=1.)  # no α
