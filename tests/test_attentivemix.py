"Property tests of AttentiveMix: the teacher's attention grid, the top-k cell mask, `attentivemix` and its callback."
import sys
from pathlib import Path
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from hypothesis import given, settings, strategies as st
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # test this checkout, installed or not
from openmixup_nb.attentivemix import attention_grid, attentive_mask, attentivemix, AttentiveMixCallback, Renormalize
from openmixup_nb.callback import synth_dls
from openmixup_nb.data import CIFAR_STATS
from openmixup_nb.models import create_model
from fastai.learner import Learner
from fastai.losses import CrossEntropyLossFlat
import fastai.callback.progress  # noqa: F401  Learner.no_bar

FAST = settings(max_examples=25, deadline=None)
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

from _helpers import gen, distinct

class BlockMean(nn.Module):
    "A toy teacher: 4×4 block averages through a BatchNorm (float32 parameters); records its mode"
    def __init__(self, c=3):
        super().__init__(); self.bn = nn.BatchNorm2d(c); self.modes = []
    def forward_features(self, x):
        self.modes.append(self.training)
        return self.bn(F.avg_pool2d(x, 4))

@st.composite
def batches(draw, min_n=1, max_n=6, dtypes=DTYPES):
    "An image batch (N, C, H, W) with odd / non-square sizes (down to 1×1), 1..4 channels, a dtype and int labels"
    n, c = draw(st.integers(min_n, max_n)), draw(st.integers(1, 4))
    h, w = draw(st.integers(1, 40)), draw(st.integers(1, 40))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    return x, torch.randint(0, 5, (n,), generator=g), seed


def small_teacher():
    "A small CNN with BatchNorm and no `forward_features`: its output is the feature map (stride 4)"
    return nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.BatchNorm2d(8))

def cell_of(n, s): return torch.arange(n) * s // n

def grid_of(mask, sh, sw):
    "Read the (N, sh, sw) cell values off a (N, 1, H, W) mask (one pixel per cell; needs H >= sh, W >= sw)"
    H, W = mask.shape[-2:]
    rows, cols = cell_of(H, sh).tolist(), cell_of(W, sw).tolist()
    return mask[:, 0][:, [rows.index(i) for i in range(sh)]][:, :, [cols.index(j) for j in range(sw)]]

def n_cells(lam, cells): return (torch.as_tensor(lam, dtype=torch.float32) * cells).floor().long().clamp(1, cells)

# ------------------------------------------------------------------------------------------ attention grid
def test_attention_grid_is_channel_mean_in_eval_mode():
    x = torch.randn(3, 3, 16, 20)
    t = BlockMean().train()
    a = attention_grid(t, x, feat_size=None)
    assert a.shape == (3, 4, 5) and a.dtype == torch.float32 and not a.requires_grad
    torch.testing.assert_close(a, F.avg_pool2d(x, 4).mean(1) / (1 + 1e-5)**0.5)
    assert t.modes == [False] and t.training and t.bn.training  # ran in eval, mode given back
    assert int(t.bn.num_batches_tracked) == 0 and torch.equal(t.bn.running_mean, torch.zeros(3))
    assert all(p.grad is None for p in t.parameters())

def test_attention_grid_keeps_submodule_modes():
    t = BlockMean().train(); t.bn.eval()
    attention_grid(t, torch.randn(1, 3, 8, 8), None)
    assert t.training and not t.bn.training

def test_attention_grid_resizes_to_feat_size():
    x = torch.randn(2, 3, 32, 32)
    t = BlockMean()
    assert attention_grid(t, x, feat_size=56).shape == (2, 14, 14)
    assert attention_grid(t, x, feat_size=(24, 40)).shape == (2, 6, 10)
    ref = F.avg_pool2d(F.interpolate(x, size=(24, 40), mode='bilinear', align_corners=False), 4).mean(1)
    torch.testing.assert_close(attention_grid(t, x, (24, 40)), ref / (1 + 1e-5)**0.5)

def test_attention_grid_teacher_kinds():
    x = torch.randn(2, 3, 16, 16)
    plain = nn.Sequential(nn.Conv2d(3, 5, 3, 2, 1), nn.ReLU())  # no forward_features: its output is the map
    torch.testing.assert_close(attention_grid(plain, x, None), plain(x).mean(1))
    class Pyramid(nn.Module):  # timm features_only style: a list of maps, the last one is used
        def forward(self, x): return [x, F.avg_pool2d(x, 2), F.avg_pool2d(x, 4)]
    torch.testing.assert_close(attention_grid(Pyramid(), x, None), F.avg_pool2d(x, 4).mean(1))
    with pytest.raises(ValueError, match='4-d feature map'): attention_grid(nn.Sequential(nn.Flatten(), nn.Linear(768, 4)), x, None)
    with pytest.raises(ValueError, match='nn.Module'): attention_grid(lambda x: x, x)
    with pytest.raises(ValueError, match='x must'): attention_grid(plain, x[0])
    for bad in (0, -1, (1,), (2, 0), 'big', 2.5, True):
        with pytest.raises(ValueError, match='feat_size'): attention_grid(plain, x, bad)

def test_renormalize():
    m = small_teacher().eval()
    raw = torch.rand(2, 3, 32, 32)
    norm = lambda x, st: (x - torch.tensor(st[0]).view(1, 3, 1, 1)) / torch.tensor(st[1]).view(1, 3, 1, 1)
    imnet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    torch.testing.assert_close(attention_grid(Renormalize(m, CIFAR_STATS, imnet), norm(raw, CIFAR_STATS), None),
                               attention_grid(m, norm(raw, imnet), None), atol=1e-4, rtol=1e-4)

# ------------------------------------------------------------------------------------------ mask
@FAST
@given(n=st.integers(1, 5), sh=st.integers(1, 8), sw=st.integers(1, 8), H=st.integers(8, 40), W=st.integers(8, 40),
       mode=st.sampled_from(['batch', 'sample']), seed=st.integers(0, 2**31 - 1))
def test_mask_block_constant_top_k(n, sh, sw, H, W, mode, seed):
    g = gen(seed)
    score = torch.randn(n, sh, sw, generator=g)
    lam = torch.rand(n if mode == 'sample' else 1, generator=g)
    m = attentive_mask(score, lam, H, W)
    assert m.shape == (n, 1, H, W) and m.dtype == torch.bool
    grid = grid_of(m, sh, sw)
    # block-constant on the grid, with PyTorch's own nearest rule (any scale, 32/7 included)
    assert torch.equal(m, F.interpolate(grid[:, None].float(), size=(H, W), mode='nearest').bool())
    k = n_cells(lam, sh * sw).expand(n)
    assert torch.equal(grid.flatten(1).sum(1), k)  # exactly k cells
    for i in range(n):  # the k best-scored cells
        s, sel = score[i].flatten(), grid[i].flatten()
        if (~sel).any(): assert s[sel].min() > s[~sel].max()

@FAST
@given(top_k=st.integers(1, 49), seed=st.integers(0, 2**31 - 1))
def test_mask_fixed_top_k(top_k, seed):
    score = torch.randn(4, 7, 7, generator=gen(seed))
    m = attentive_mask(score, 0.5, 32, 32, top_k=top_k)
    assert torch.equal(grid_of(m, 7, 7).flatten(1).sum(1), torch.full((4,), top_k))

def test_mask_k_clamped_and_ties():
    score = torch.zeros(2, 3, 3)
    assert torch.equal(grid_of(attentive_mask(score, 0., 9, 9), 3, 3).flatten(1).sum(1), torch.tensor([1, 1]))  # at least 1
    assert grid_of(attentive_mask(score, 1., 9, 9), 3, 3).all()  # at most all
    first = grid_of(attentive_mask(score, 0.34, 9, 9), 3, 3).flatten(1)  # ties: first cells in reading order
    assert torch.equal(first[0], torch.tensor([True, True, True] + [False]*6))

def test_mask_small_images_and_errors():
    m = attentive_mask(torch.randn(2, 7, 7), 0.5, 3, 5)  # image smaller than the grid: still a valid mask
    assert m.shape == (2, 1, 3, 5)
    with pytest.raises(ValueError, match='top_k'): attentive_mask(torch.randn(2, 7, 7), 0.5, 32, 32, top_k=50)
    with pytest.raises(ValueError, match='top_k'): attentive_mask(torch.randn(2, 7, 7), 0.5, 32, 32, top_k=0)
    with pytest.raises(ValueError, match='score'): attentive_mask(torch.randn(7, 7), 0.5, 32, 32)
    with pytest.raises(ValueError, match='lam'): attentive_mask(torch.randn(2, 7, 7), 1.5, 32, 32)
    with pytest.raises(ValueError, match='lam'): attentive_mask(torch.randn(2, 7, 7), torch.rand(3), 32, 32)

# ------------------------------------------------------------------------------------------ attentivemix
@FAST
@given(b=batches(), mode=st.sampled_from(['batch', 'sample']), sh=st.integers(1, 7), sw=st.integers(1, 7),
       pairing=st.sampled_from(['perm', 'derangement', 'flip']), top_k=st.sampled_from([None, None, 1, 6]))
def test_attentivemix_properties(b, mode, sh, sw, pairing, top_k):
    x, y, seed = b
    x = distinct(x); x0 = x.clone()
    teacher = BlockMean(x.shape[1])
    top_k = None if top_k is not None and top_k > sh * sw else top_k
    res = attentivemix(x, y, teacher, lam_mode=mode, pairing=pairing, top_k=top_k, feat_size=(4 * sh, 4 * sw), generator=gen(seed))
    n, (H, W) = len(x), x.shape[-2:]
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x.float()).all()
    assert torch.equal(x, x0)  # not in place
    assert res.lam.shape == (n,) and res.lam.dtype == torch.float32
    assert torch.equal(res.y_a, y) and torch.equal(res.y_b, y[res.index])
    m = res.mask[:, 0].bool()
    other = res.index != torch.arange(n)  # samples with a real partner (distinct images differ everywhere)
    assert torch.equal((res.x == x).all(1)[other], m[other])  # first image where the mask is set...
    assert torch.equal((res.x == x[res.index]).all(1)[other], ~m[other])  # ...the partner elsewhere
    assert torch.equal(res.x[~other], x[~other])
    torch.testing.assert_close(res.lam, m.float().mean((1, 2)), atol=1e-6, rtol=0)  # λ == realised share
    # the kept cells are the best-scored cells of each image's own attention map
    score = attention_grid(teacher, x, (4 * sh, 4 * sw))
    assert torch.equal(res.extra['score'], score)
    if H >= sh and W >= sw:
        grid = grid_of(res.mask, sh, sw).bool()
        assert torch.equal(res.mask.bool(), F.interpolate(grid[:, None].float(), size=(H, W), mode='nearest').bool())
        k = grid.flatten(1).sum(1)
        if top_k is not None: assert (k == top_k).all()
        elif mode == 'batch': assert (k == k[0]).all()
        for i in range(n):
            s, sel = score[i].flatten(), grid[i].flatten()
            if (~sel).any(): assert s[sel].min() >= s[~sel].max()

@FAST
@given(b=batches(), mode=st.sampled_from(['batch', 'sample']))
def test_identity_partner_inplace_determinism(b, mode):
    x, y, seed = b
    t = BlockMean(x.shape[1])
    assert torch.equal(attentivemix(x, y, t, index=torch.arange(len(x)), lam_mode=mode, feat_size=8).x, x)
    ref = attentivemix(x, y, t, lam_mode=mode, feat_size=8, generator=gen(seed))
    again = attentivemix(x, y, t, lam_mode=mode, feat_size=8, generator=gen(seed))
    assert torch.equal(ref.x, again.x) and torch.equal(ref.lam, again.lam)
    xc = x.clone()
    out = attentivemix(xc, y, t, lam_mode=mode, feat_size=8, generator=gen(seed), inplace=True)
    assert out.x is xc and torch.equal(out.x, ref.x) and torch.equal(out.lam, ref.lam)

def test_explicit_lam_on_the_7x7_grid():
    "lam=0.5 keeps floor(49/2) = 24 cells; on 28×28 images (4-pixel cells) λ is exactly 24/49"
    x = torch.randn(6, 3, 28, 28)
    res = attentivemix(x, torch.arange(6), BlockMean(), lam=0.5, index=torch.arange(6).roll(1), feat_size=28)
    torch.testing.assert_close(res.lam, torch.full((6,), 24 / 49))
    res = attentivemix(x, torch.arange(6), BlockMean(), lam=torch.linspace(0, 1, 6), feat_size=28)
    torch.testing.assert_close(res.lam, n_cells(torch.linspace(0, 1, 6), 49).float() / 49)

def test_sample_mode_varies_k():
    x = torch.randn(32, 3, 28, 28)
    res = attentivemix(x, torch.arange(32), BlockMean(), 2., lam_mode='sample', feat_size=28, generator=gen(0))
    assert len(set(res.lam.tolist())) > 5

def test_teacher_untouched_by_attentivemix():
    t = create_model('resnet18', width=0.125).train()
    sd = {k: v.clone() for k, v in t.state_dict().items()}
    x = torch.randn(4, 3, 32, 32, requires_grad=True)
    res = attentivemix(x.detach(), torch.arange(4), t, feat_size=56)
    assert res.extra['score'].shape == (4, 7, 7)  # a CIFAR ResNet (stride 8) at 56²: OpenMixup's 7×7 grid
    assert t.training and all(p.grad is None for p in t.parameters())
    assert all(torch.equal(v, sd[k]) for k, v in t.state_dict().items())
    assert not res.x.requires_grad

def test_errors():
    x, y, t = torch.randn(4, 3, 8, 8), torch.arange(4), BlockMean()
    with pytest.raises(ValueError, match='dimensions'): attentivemix(torch.randn(4, 8, 8), y, t)
    with pytest.raises(ValueError, match='N, C, H, W'): attentivemix(torch.randn(4, 1, 3, 8, 8), y, t)
    with pytest.raises(ValueError, match='labels'): attentivemix(x, torch.arange(3), t)
    with pytest.raises(ValueError, match='alpha'): attentivemix(x, y, t, alpha=0)
    with pytest.raises(ValueError, match='lam'): attentivemix(x, y, t, lam=-0.1)
    with pytest.raises(ValueError, match='index'): attentivemix(x, y, t, index=torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match='lam_mode'): attentivemix(x, y, t, lam_mode='cell')
    with pytest.raises(ValueError, match='pairing'): attentivemix(x, y, t, pairing='nearest')
    with pytest.raises(ValueError, match='top_k'): attentivemix(x, y, t, top_k=0)
    with pytest.raises(ValueError, match='top_k'): attentivemix(x, y, t, top_k=True)
    with pytest.raises(ValueError, match='top_k'): attentivemix(x, y, t, top_k=50, feat_size=28)  # 7×7 = 49 cells
    with pytest.raises(ValueError, match='feat_size'): attentivemix(x, y, t, feat_size=0)
    with pytest.raises(ValueError, match='nn.Module'): attentivemix(x, y, None)
    with pytest.raises(ValueError, match='4-d feature map'): attentivemix(x, y, nn.Flatten(), feat_size=None)

# ------------------------------------------------------------------------------------------ callback
def fit(cb, shape=(3, 16, 16), epochs=1):
    torch.manual_seed(0)
    lf = CrossEntropyLossFlat()
    learn = Learner(synth_dls(shape=shape), nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], 3)),
                    loss_func=lf, cbs=cb)
    with learn.no_bar(), learn.no_logging(): learn.fit(epochs, 0.05)
    assert learn.loss_func is lf
    assert all(torch.isfinite(torch.tensor(v)).all() for v in learn.recorder.values[-1])
    return learn

@pytest.mark.parametrize('kw', [{}, {'lam_mode': 'sample'}, {'top_k': 2}, {'p': 0.5}])
def test_callback_teacher_frozen(kw):
    teacher = small_teacher().train()  # even handed over in train mode
    sd = {k: v.clone() for k, v in teacher.state_dict().items()}
    cb = AttentiveMixCallback(teacher, feat_size=None, **kw)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    learn = fit(cb)
    assert not teacher.training  # fastai's model.train() never reaches it
    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    assert all(torch.equal(v, sd[k]) for k, v in teacher.state_dict().items())  # BatchNorm statistics included
    ids = {id(p) for p in teacher.parameters()}
    assert not ids & {id(p) for p in learn.model.parameters()}
    assert not ids & {id(p) for pg in learn.opt.param_lists for p in pg}
    assert cb.state_dict() == {} or len(cb.state_dict()) == 0

def test_callback_runs_a_train_mode_teacher_in_eval():
    teacher = small_teacher()
    cb = AttentiveMixCallback(teacher, feat_size=None)
    teacher.train()  # the user flips it back after making the callback
    sd = {k: v.clone() for k, v in teacher.state_dict().items()}
    fit(cb)
    assert all(torch.equal(v, sd[k]) for k, v in teacher.state_dict().items())

def test_callback_mixes_like_the_function():
    teacher = BlockMean()
    cb = AttentiveMixCallback(teacher, feat_size=8, lam_mode='sample', generator=gen(0))
    learn = Learner(synth_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=CrossEntropyLossFlat(), cbs=cb)
    b = learn.dls.one_batch(); x0 = b[0].clone()
    learn._split(b); learn.training = True
    cb('before_fit'); cb('before_train'); cb('before_batch')
    ref = attentivemix(x0, b[1], teacher, lam_mode='sample', feat_size=8, generator=gen(0))
    assert torch.equal(learn.x, ref.x) and torch.equal(cb.res.lam, ref.lam)
    cb('after_train'); cb('after_fit')

def test_callback_refuses_shared_teacher_and_bad_args():
    m = create_model('resnet18', width=0.125, num_classes=3)
    with pytest.raises(ValueError, match='shares parameters'):
        Learner(synth_dls(), m, loss_func=CrossEntropyLossFlat(), cbs=AttentiveMixCallback(m))
    with pytest.raises(ValueError, match='nn.Module'): AttentiveMixCallback('resnet18')
    with pytest.raises(ValueError, match='alpha'): AttentiveMixCallback(BlockMean(), alpha=0)
    with pytest.raises(ValueError, match='top_k'): AttentiveMixCallback(BlockMean(), top_k=-1)
    with pytest.raises(ValueError, match='feat_size'): AttentiveMixCallback(BlockMean(), feat_size=(1, 2, 3))
    with pytest.raises(ValueError, match='lam_mode'): AttentiveMixCallback(BlockMean(), lam_mode='x')
    with pytest.raises(ValueError, match='p must'): AttentiveMixCallback(BlockMean(), p=-1)
