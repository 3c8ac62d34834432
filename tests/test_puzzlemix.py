"""PuzzleMix: the labelling energy against a literal loop, the solvers against enumeration and each other, the block
transport against a dense reference, the mixer's invariants (levels, blocks, λ, block permutations), the prior's mode
with no saliency, the callback's saliency pass leaving the model as it was, and the bad-input catalogue."""
import math, sys
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from hypothesis import given, settings, assume, strategies as st
from _helpers import _seed, _one_thread, gen # autouse fixtures: seed 0 per test, one thread per module
import openmixup_nb.puzzlemix as pm
from openmixup_nb.puzzlemix import (PUZZLEMIX_PRESETS, GridEnergy, grid_energy, puzzle_energy, block_saliency, puzzle_grid,
                                    solve_batched, solve_exact, solve_gco, solve_labels, transport_plan, apply_plan,
                                    puzzlemix, PuzzleMixCallback)
from openmixup_nb.callback import synth_dls
from openmixup_nb.models import create_model
from fastai.learner import Learner
from fastai.callback.core import Callback
from fastai.losses import CrossEntropyLossFlat
import fastai.callback.progress  # noqa: F401  Learner.no_bar

FAST = settings(max_examples=25, deadline=None)
HAS_GCO = True
try: import gco  # noqa: F401
except ImportError: HAS_GCO = False

# ------------------------------------------------------------------------------------------ helpers
def random_energy(g, B, n, L, smooth=1., dtype=torch.float64):
    "Label costs and edge weights of PuzzleMix's magnitude (about 1/n² per block)"
    r = lambda *shape: torch.rand(*shape, generator=g, dtype=dtype) / n**2
    return GridEnergy(r(B, n, n, L), smooth * r(B, n - 1, n), smooth * r(B, n, n - 1))

def brute_force(e):
    "Minimum energy of each grid over all L^(n·n) labellings"
    B, n, _, L = e.unary.shape
    labs = torch.cartesian_prod(*[torch.arange(L)] * (n * n)).view(-1, n, n)
    return torch.stack([grid_energy(e[[b] * len(labs)], labs).min() for b in range(B)])

def literal_energy(e, lab):
    "grid_energy written as loops over blocks and edges"
    B, n, _, L = e.unary.shape
    d = lambda i, j: ((i - j) / (L - 1)) ** 2
    out = []
    for b in range(B):
        tot = sum(float(e.unary[b, r, c, lab[b, r, c]]) for r in range(n) for c in range(n))
        tot += sum(float(e.w_v[b, r, c]) * d(int(lab[b, r, c]), int(lab[b, r + 1, c])) for r in range(n - 1) for c in range(n))
        tot += sum(float(e.w_h[b, r, c]) * d(int(lab[b, r, c]), int(lab[b, r, c + 1])) for r in range(n) for c in range(n - 1))
        out.append(tot)
    return torch.tensor(out, dtype=torch.float64)

def literal_puzzle_energy(x, s, index, n, lam, beta, gamma, eta, g, L, mean, std):
    "PuzzleMix's energy built block by block and edge by edge, from the paper's description"
    N, C, H, W = x.shape
    bh, bw = H // n, W // n
    img = x.double() * torch.tensor(std, dtype=torch.float64).view(1, -1, 1, 1) + torch.tensor(mean, dtype=torch.float64).view(1, -1, 1, 1)
    img = img.clamp(0, 1) # colours in [0, 1]
    nb = lambda i, y0, x0: img[i, :, y0:y0 + g, x0:x0 + g].mean((1, 2)) # a g×g neighbourhood's colour
    b_ = beta / n / 16
    unary = torch.zeros(N, n, n, L, dtype=torch.float64)
    wv, wh = torch.zeros(N, n - 1, n, dtype=torch.float64), torch.zeros(N, n, n - 1, dtype=torch.float64)
    for i in range(N):
        j = int(index[i])
        sal = [s[k].double().view(n, bh, n, bw).mean((1, 3)) for k in (i, j)]
        ua, ub = (t / t.sum() if t.sum() > 0 else torch.full_like(t, 1 / n**2) for t in sal)
        Sa, Sb = torch.zeros(n, n, dtype=torch.float64), torch.zeros(n, n, dtype=torch.float64)
        def edge(cells_p, cells_q):
            "E[p][q] for images p (first side), q (second side) in {a: i, b: j}"
            E = {}
            for p, ip in (('a', i), ('b', j)):
                for q, iq in (('a', i), ('b', j)):
                    E[p + q] = b_ * gamma * torch.stack([(nb(ip, *u) - nb(iq, *v)).abs().mean() for u, v in zip(cells_p, cells_q)]).mean()
            return E
        for r in range(n - 1):
            for c in range(n):
                up = [((r + 1) * bh - g, c * bw + k * g) for k in range(bw // g)]
                dn = [((r + 1) * bh, c * bw + k * g) for k in range(bw // g)]
                E = edge(up, dn)
                Sa[r, c] += (E['ab'] + E['aa']) / 2; Sb[r, c] += (E['ba'] + E['bb']) / 2
                Sa[r + 1, c] += (E['ba'] + E['aa']) / 2; Sb[r + 1, c] += (E['ab'] + E['bb']) / 2
                wv[i, r, c] = b_ + (E['ab'] + E['ba'] - E['aa'] - E['bb']) / 2
        for r in range(n):
            for c in range(n - 1):
                lf = [(r * bh + k * g, (c + 1) * bw - g) for k in range(bh // g)]
                rt = [(r * bh + k * g, (c + 1) * bw) for k in range(bh // g)]
                E = edge(lf, rt)
                Sa[r, c] += (E['ab'] + E['aa']) / 2; Sb[r, c] += (E['ba'] + E['bb']) / 2
                Sa[r, c + 1] += (E['ba'] + E['aa']) / 2; Sb[r, c + 1] += (E['ab'] + E['bb']) / 2
                wh[i, r, c] = b_ + (E['ab'] + E['ba'] - E['aa'] - E['bb']) / 2
        a = float(lam[i] if len(lam) > 1 else lam[0])
        for k in range(L):
            m = k / (L - 1)
            prior = math.comb(L - 1, k) * a**k * (1 - a)**(L - 1 - k)
            unary[i, :, :, k] = m * (ub + Sa) + (1 - m) * (ua + Sb) + eta / n**2 * -math.log(prior + 1e-8)
    return GridEnergy(unary, wv, wh)

def dense_transport(z, u, t_eps, rounds=None):
    "The auction with every row re-solved every round (the accelerator path), written out plainly"
    B, T, _ = z.shape; S = T * T
    i = torch.arange(S)
    D = ((i[:, None] // T - i[None] // T) ** 2 + (i[:, None] % T - i[None] % T) ** 2).float() / max(T - 1, 1) ** 2
    out = []
    for b in range(B):
        cost = t_eps * D - u[b].reshape(S, 1).float() * z[b].reshape(1, S).float()
        for _ in range(T if rounds is None else rounds):
            choice = cost.argmin(1)
            winner = torch.full((S,), -1, dtype=torch.long)
            for t in range(S):
                claim = (choice == t).nonzero().flatten()
                if len(claim):
                    c = cost[claim, t]
                    winner[t] = claim[(c == c.min()).nonzero()[0, 0]]
            for s_ in range(S):
                if winner[choice[s_]] != s_: cost[s_, choice[s_]] += 1
        out.append(winner)
    return torch.stack(out)

@st.composite
def image_batches(draw, grids=(2, 4, 8), channels=(1, 3), dtypes=(torch.float32,)):
    "Images (N, C, H, W) with H, W multiples of the largest grid (non-square allowed), saliency, labels"
    big = max(grids)
    n, c = draw(st.integers(1, 6)), draw(st.sampled_from(channels))
    h, w = big * draw(st.integers(1, 3)), big * draw(st.integers(1, 3))
    dtype, seed = draw(st.sampled_from(dtypes)), draw(st.integers(0, 2**31 - 1))
    g = gen(seed)
    x = torch.randn(n, c, h, w, generator=g).to(dtype)
    s = torch.rand(n, h, w, generator=g) ** 3 * (torch.rand(n, 1, 1, generator=g) > 0.1) # some maps all zero
    return x, s, torch.randint(0, 5, (n,), generator=g), seed

STATS = dict(mean=0.5, std=0.25)

# ------------------------------------------------------------------------------------------ energy
@FAST
@given(b=image_batches(grids=(2, 4)), n=st.sampled_from([2, 4]), L=st.sampled_from([2, 3, 4]), lam=st.floats(0.01, 0.99),
       beta=st.sampled_from([0., 1.2, 5.]), gamma=st.sampled_from([0., 0.5, 1.]), neigh=st.sampled_from([1, 2, 4]))
def test_energy_matches_literal_construction(b, n, L, lam, beta, gamma, neigh):
    x, s, _, seed = b
    H, W = x.shape[-2:]
    g = pm._largest_divisor(math.gcd(H // n, W // n), neigh)
    index = torch.randperm(len(x), generator=gen(seed))
    e = puzzle_energy(x, s, index, n, torch.tensor([lam]), beta, gamma, 0.2, neigh, L, (0.5,) * x.shape[1], (0.25,) * x.shape[1])
    ref = literal_puzzle_energy(x, s, index, n, [lam], beta, gamma, 0.2, g, L, (0.5,) * x.shape[1], (0.25,) * x.shape[1])
    for got, want in zip((e.unary, e.w_v, e.w_h), (ref.unary, ref.w_v, ref.w_h)):
        torch.testing.assert_close(got.double(), want, atol=1e-6, rtol=1e-5)

@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.integers(2, 5), L=st.integers(2, 4))
def test_grid_energy_literal(seed, n, L):
    g = gen(seed)
    e = random_energy(g, 3, n, L)
    lab = torch.randint(0, L, (3, n, n), generator=g)
    torch.testing.assert_close(grid_energy(e, lab), literal_energy(e, lab))

def test_block_saliency_and_grid():
    s = torch.rand(3, 16, 24); s[1] = 0
    u = block_saliency(s, 4)
    assert u.shape == (3, 4, 4)
    torch.testing.assert_close(u.sum((1, 2)), torch.ones(3))
    assert torch.equal(u[1], torch.full((4, 4), 1 / 16)) # an all-zero map counts as uniform
    g = gen(0)
    assert {puzzle_grid(5, g) for _ in range(300)} == {2, 4, 8, 16}
    assert {puzzle_grid(2, g) for _ in range(20)} == {2}

# ------------------------------------------------------------------------------------------ solvers
@FAST
@given(seed=st.integers(0, 2**31 - 1), nl=st.sampled_from([(2, 2), (2, 3), (2, 4), (3, 2), (3, 3)]),
       smooth=st.sampled_from([0., 0.3, 1., 5.]))
def test_solvers_against_enumeration(seed, nl, smooth):
    n, L = nl
    e = random_energy(gen(seed), 4, n, L, smooth)
    best = brute_force(e)
    torch.testing.assert_close(grid_energy(e, solve_exact(e)), best, atol=1e-9, rtol=0)
    torch.testing.assert_close(grid_energy(e, solve_batched(e)), best, atol=1e-12, rtol=0) # L^n <= 81: exact DP
    if HAS_GCO: assert (grid_energy(e, solve_gco(e)) >= best - 1e-12).all()

@FAST
@given(seed=st.integers(0, 2**31 - 1), n=st.sampled_from([4, 6, 8, 16]), L=st.sampled_from([2, 3]),
       smooth=st.sampled_from([0.1, 1., 4.]), strip=st.sampled_from([1, 2, 3]))
def test_batched_never_below_exact_and_never_worse_than_its_start(seed, n, L, smooth, strip):
    g = gen(seed)
    e = random_energy(g, 6, n, L, smooth)
    exact = grid_energy(e, solve_exact(e))
    lab = solve_batched(e, strip=strip)
    assert lab.shape == (6, n, n) and lab.dtype == torch.long and lab.min() >= 0 and lab.max() < L
    assert (grid_energy(e, lab) >= exact - 1e-12).all()
    start = torch.randint(0, L, (6, n, n), generator=g)
    assert (grid_energy(e, solve_batched(e, strip=strip, init=start)) <= grid_energy(e, start) + 1e-12).all() # moves never increase E
    if HAS_GCO: assert (grid_energy(e, solve_gco(e)) >= exact - 1e-12).all()

def test_batched_close_to_exact_on_real_energies():
    "On PuzzleMix energies of natural-looking images the batched solver is within 2% of the optimum, median 0"
    g = gen(0)
    x = F.avg_pool2d(torch.randn(64, 3, 64, 64, generator=g), 2, 2) * 4 # smooth-ish images
    s = F.avg_pool2d(torch.rand(64, 1, 64, 64, generator=g) ** 4, 2, 2)[:, 0]
    for n in (8, 16):
        e = puzzle_energy(x, s, torch.randperm(64, generator=g), n, torch.rand(64, generator=g), mean=(0.5,) * 3, std=(0.25,) * 3)
        r = grid_energy(e.to(torch.float64), solve_batched(e)) / grid_energy(e.to(torch.float64), solve_exact(e))
        assert (r >= 1 - 1e-6).all() and float(r.median()) < 1 + 1e-6 and float(r.max()) < 1.02

def test_solver_errors(monkeypatch):
    e = random_energy(gen(0), 2, 4, 3)
    bad = GridEnergy(e.unary, -e.w_v, e.w_h)
    with pytest.raises(ValueError, match='non-negative edge weights'): solve_exact(bad)
    with pytest.raises(ValueError, match='non-negative edge weights'): solve_gco(bad)
    assert solve_batched(bad).shape == (2, 4, 4)
    with pytest.raises(ValueError, match='solver must be one of'): solve_labels(e, 'icm')
    with pytest.raises(ValueError, match='labels must be an integer tensor'): grid_energy(e, torch.zeros(2, 4, 4))
    with pytest.raises(ValueError, match='labels must be an integer tensor'): grid_energy(e, torch.zeros(2, 3, 4, dtype=torch.long))
    monkeypatch.setitem(sys.modules, 'gco', None)
    with pytest.raises(ImportError, match='pip install gco-wrapper'): solve_gco(e)

@pytest.mark.skipif(not HAS_GCO, reason='pyGCO not installed')
def test_gco_overflow_guard():
    "pyGCO aborts the process on int32 overflow: the scaled terms are checked first"
    e = random_energy(gen(0), 2, 4, 3)
    with pytest.raises(ValueError, match='int32'): solve_gco(GridEnergy(e.unary, 1e3 * e.w_v, e.w_h))

# ------------------------------------------------------------------------------------------ transport
@FAST
@given(seed=st.integers(0, 2**31 - 1), T=st.integers(2, 6), kind=st.sampled_from(['rand', 'zero', 'flat', 'binary', 'peaky']),
       t_eps=st.sampled_from([0., 0.01, 0.8, 5.]), p=st.floats(0., 1.))
def test_transport_matches_dense_reference(seed, T, kind, t_eps, p):
    g = gen(seed)
    B = 3
    z = torch.rand(B, T, T, generator=g) < p
    u = {'rand': torch.rand(B, T, T, generator=g), 'zero': torch.zeros(B, T, T), 'flat': torch.ones(B, T, T),
         'binary': (torch.rand(B, T, T, generator=g) > 0.5).float(), 'peaky': torch.rand(B, T, T, generator=g) ** 8}[kind]
    u = u / u.sum((1, 2), keepdim=True).clamp_min(1e-30)
    plan = transport_plan(z, u, t_eps)
    assert torch.equal(plan, dense_transport(z, u, t_eps))
    for row in plan: # a partial permutation: every source at most once
        used = row[row >= 0]
        assert len(used.unique()) == len(used)

def test_transport_chunks_and_fixed_points(monkeypatch):
    g = gen(1)
    z, u = torch.rand(9, 4, 4, generator=g) < 0.5, torch.rand(9, 4, 4, generator=g)
    whole = transport_plan(z, u)
    monkeypatch.setattr(pm, '_T_CHUNK', 2 * 16 * 16) # two images per chunk
    assert torch.equal(transport_plan(z, u), whole)
    assert torch.equal(transport_plan(torch.ones(4, 5, 5, dtype=torch.bool), torch.rand(4, 5, 5, generator=g)), torch.arange(25).expand(4, 25))

@FAST
@given(seed=st.integers(0, 2**31 - 1), T=st.sampled_from([1, 2, 4]), n=st.integers(1, 4))
def test_apply_plan_moves_cells(seed, T, n):
    g = gen(seed)
    x = torch.randn(n, 2, 8, 12, generator=g)
    plan = torch.stack([torch.where(torch.rand(T * T, generator=g) < 0.2, -1, torch.randperm(T * T, generator=g)) for _ in range(n)])
    out = apply_plan(x, plan, T)
    ch, cw = 8 // T, 12 // T
    for i in range(n):
        for t in range(T * T):
            tr, tc = divmod(t, T)
            got = out[i, :, tr * ch:(tr + 1) * ch, tc * cw:(tc + 1) * cw]
            if plan[i, t] < 0: assert (got == 0).all()
            else:
                sr, sc = divmod(int(plan[i, t]), T)
                assert torch.equal(got, x[i, :, sr * ch:(sr + 1) * ch, sc * cw:(sc + 1) * cw])

# ------------------------------------------------------------------------------------------ mixer
def cells(img, T):
    "(T², C·h·w) cells of one image"
    C, H, W = img.shape
    return img.reshape(C, T, H // T, T, W // T).permute(1, 3, 0, 2, 4).reshape(T * T, -1)

@FAST
@given(b=image_batches(dtypes=(torch.float32, torch.float64, torch.float16, torch.bfloat16)), L=st.sampled_from([2, 3]),
       grid=st.sampled_from([None, 2, 4, 8]), transport=st.booleans(), t_size=st.sampled_from([-1, 1, 2, 4]),
       mode=st.sampled_from(['batch', 'sample']), solver=st.sampled_from(['batched', 'exact']))
def test_mixer_invariants(b, L, grid, transport, t_size, mode, solver):
    x, s, y, seed = b
    x0 = x.clone()
    res = puzzlemix(x, y, s, 1., lam_mode=mode, grid=grid, block_num=4, n_labels=L, transport=transport, t_size=t_size,
                    solver=solver, generator=gen(seed), **STATS)
    N, C, H, W = x.shape
    assert torch.equal(x, x0) # not in place
    assert res.x.shape == x.shape and res.x.dtype == x.dtype and torch.isfinite(res.x.float()).all()
    M, n, T = res.mask, res.extra['grid'], res.extra['t_grid']
    assert grid is None or n == grid
    assert M.shape == (N, 1, H, W) and M.dtype == torch.float32
    assert set(M.unique().tolist()) <= {k / (L - 1) for k in range(L)} # the level set
    blocks = (res.extra['labels'].float() / (L - 1)).repeat_interleave(H // n, 1).repeat_interleave(W // n, 2)
    assert torch.equal(M[:, 0], blocks) # constant on the n×n blocks
    assert torch.equal(res.lam, M.mean((1, 2, 3))) and res.lam.dtype == torch.float32 # λ_i == mean(M_i)
    assert torch.equal(res.y_a, y) and torch.equal(res.y_b, y[res.index])
    xb = x.index_select(0, res.index)
    if transport:
        a, bb = apply_plan(x, res.extra['plan_a'], T), apply_plan(xb, res.extra['plan_b'], T)
        for img, t_img, plan in ((x, a, res.extra['plan_a']), (xb, bb, res.extra['plan_b'])):
            for i in range(N): # the transported image is a block permutation of the original (zero cells where no source)
                src, dst = cells(img[i], T), cells(t_img[i], T)
                used = plan[i][plan[i] >= 0]
                assert len(used.unique()) == len(used)
                assert torch.equal(dst[plan[i] >= 0], src[used]) and (dst[plan[i] < 0] == 0).all()
    else: a, bb = x, xb
    Me = M.expand_as(x)
    assert torch.equal(res.x[Me == 1], a[Me == 1]) and torch.equal(res.x[Me == 0], bb[Me == 0])
    torch.testing.assert_close(res.x.float(), (M * a.float() + (1 - M) * bb.float()), atol=1e-2 if x.element_size() == 2 else 1e-6, rtol=1e-2)

@FAST
@given(L=st.sampled_from([2, 3, 4]), lam=st.floats(0.02, 0.98), n=st.sampled_from([2, 4, 8]))
def test_zero_saliency_no_smoothness_gives_the_prior_mode(L, lam, n):
    K = L - 1
    pmf = torch.tensor([math.comb(K, k) * lam**k * (1 - lam)**(K - k) for k in range(L)])
    top = pmf.topk(2).values
    assume(float(top[0] - top[1]) > 1e-3) # no tie between two modes
    x = torch.randn(3, 3, 16, 16, generator=gen(0))
    res = puzzlemix(x, None, torch.zeros(3, 16, 16), lam=lam, grid=n, n_labels=L, beta=0.)
    assert (res.extra['labels'] == int(pmf.argmax())).all()
    torch.testing.assert_close(res.lam, torch.full((3,), int(pmf.argmax()) / K))

def test_identity_partner_seeds_and_labels():
    g = gen(0)
    x, y, s = torch.randn(6, 3, 32, 32, generator=g), torch.arange(6), torch.rand(6, 32, 32, generator=g)
    assert torch.equal(puzzlemix(x, y, s, index=torch.arange(6), transport=False).x, x)
    r1, r2 = (puzzlemix(x, y, s, lam_mode='sample', generator=gen(5)) for _ in range(2))
    assert torch.equal(r1.x, r2.x) and torch.equal(r1.lam, r2.lam) and torch.equal(r1.index, r2.index)
    assert r1.extra['prior'].shape == (6,)
    soft = puzzlemix(x, torch.eye(6), s, generator=gen(1))
    torch.testing.assert_close(soft.soft_target().sum(1), torch.ones(6))
    assert puzzlemix(x, None, s).y_b is None
    assert torch.equal(puzzlemix(x, y, s[:, None], generator=gen(2)).x, puzzlemix(x, y, s, generator=gen(2)).x) # (N, 1, H, W) saliency
    # negative or non-finite saliency counts as 0
    bad = s.clone(); bad[:, :4] = -1.; bad[:, 4:6] = float('nan')
    clean = s.clone(); clean[:, :6] = 0
    assert torch.equal(puzzlemix(x, y, bad, generator=gen(3)).x, puzzlemix(x, y, clean, generator=gen(3)).x)

def test_autograd_meta_and_fastai_types():
    from fastai.torch_core import TensorImage, TensorCategory
    g = gen(0)
    x, y, s = torch.randn(4, 3, 16, 16, generator=g), torch.arange(4), torch.rand(4, 16, 16, generator=g)
    xg = x.clone().requires_grad_()
    res = puzzlemix(xg, y, s, generator=gen(1))
    res.x.sum().backward() # the mix is differentiable in the images; the mask is a constant
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
    assert torch.equal(res.x.detach(), puzzlemix(x, y, s, generator=gen(1)).x)
    meta = puzzlemix(x.to('meta'), y.to('meta'), s.to('meta'))
    assert meta.x.shape == x.shape and meta.mask.shape == (4, 1, 16, 16) and meta.lam.shape == (4,)
    with pytest.raises(ValueError, match='meta device'): puzzlemix(x.to('meta'), y.to('meta'), s.to('meta'), solver='exact')
    typed = puzzlemix(TensorImage(x), TensorCategory(y), TensorImage(s), generator=gen(1))
    assert torch.equal(typed.x, puzzlemix(x, y, s, generator=gen(1)).x)

def test_presets_and_default_stats():
    x, s = torch.randn(2, 3, 64, 64), torch.rand(2, 64, 64)
    r = puzzlemix(x, None, s, **PUZZLEMIX_PRESETS['imagenet'], generator=gen(0))
    assert r.extra['grid'] in (2, 4, 8) and r.extra['t_grid'] == r.extra['grid'] # whole blocks are transported
    # mean/std None: ImageNet's for images 64 px wide or more, CIFAR's below
    assert torch.equal(puzzlemix(x, None, s, generator=gen(1)).x,
                       puzzlemix(x, None, s, generator=gen(1), mean=PUZZLEMIX_PRESETS['imagenet']['mean'], std=PUZZLEMIX_PRESETS['imagenet']['std']).x)
    xs, ss = x[..., :32, :32], s[..., :32, :32]
    assert torch.equal(puzzlemix(xs, None, ss, generator=gen(1)).x, puzzlemix(xs, None, ss, generator=gen(1), **PUZZLEMIX_PRESETS['cifar']).x)

def test_official_t_grid():
    "CIFAR: 4-pixel cells on 8×8 cells for grids up to 8, the 2-pixel blocks themselves on the 16×16 grid"
    x, s = torch.randn(2, 3, 32, 32), torch.rand(2, 32, 32)
    assert [puzzlemix(x, None, s, grid=n).extra['t_grid'] for n in (2, 4, 8, 16)] == [8, 8, 8, 16]
    assert [puzzlemix(x, None, s, grid=n, t_size=-1).extra['t_grid'] for n in (2, 4, 8, 16)] == [2, 4, 8, 16]

# ------------------------------------------------------------------------------------------ callback
class Snap(Callback):
    "Around the mixing callback: before it plant gradients and copy the model's state, after it compare"
    def __init__(self, after): self.after, self.order, self.checked = after, (1 if after else -1), 0
    def before_batch(self):
        if not self.training: return
        m = self.learn.model
        if not self.after:
            for p in m.parameters(): p.grad = torch.randn_like(p)
            self.learn._snap = ({k: v.clone() for k, v in m.state_dict().items()}, [p.grad.clone() for p in m.parameters()],
                                [l.training for l in m.modules()], [p.requires_grad for p in m.parameters()])
            return
        state, grads, flags, req = self.learn._snap
        assert all(torch.equal(v, state[k]) for k, v in m.state_dict().items()) # parameters and BatchNorm statistics
        assert all(torch.equal(p.grad, g) for p, g in zip(m.parameters(), grads))
        assert [l.training for l in m.modules()] == flags and [p.requires_grad for p in m.parameters()] == req
        assert self.learn.cbs.filter(lambda c: isinstance(c, PuzzleMixCallback))[0].res is not None
        self.checked += 1

def test_callback_saliency_pass_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    net = create_model('resnet18', num_classes=3, width=0.125)
    net.stages[1].eval() # a mix of training flags
    for p in list(net.parameters())[:2]: p.requires_grad_(False)
    probe = Snap(True)
    learn = Learner(synth_dls(shape=(3, 16, 16)), net, loss_func=CrossEntropyLossFlat(),
                    cbs=[PuzzleMixCallback(block_num=4), Snap(False), probe])
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 1e-3)
    assert probe.checked == 8

@pytest.mark.parametrize('kw', [{}, {'solver': 'exact'}, {'lam_mode': 'sample', 'transport': False}, {'p': 0.5}, {'n_labels': 2}, {'column_labels': True}]
                         + ([{'solver': 'gco'}] if HAS_GCO else []))
def test_callback_trains_and_restores_loss(kw):
    torch.manual_seed(0)
    lf = CrossEntropyLossFlat()
    column = kw.pop('column_labels', False)
    class Column(Callback): # (N, 1) class indices, as some fastai pipelines give
        order = -10
        def before_batch(self): self.learn.yb = (self.yb[0][:, None],)
    learn = Learner(synth_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=lf,
                    cbs=[PuzzleMixCallback(block_num=3, **kw)] + ([Column()] if column else []))
    with learn.no_bar(), learn.no_logging(): learn.fit(1, 0.1)
    assert learn.loss_func is lf
    assert all(torch.isfinite(torch.tensor(v)).all() for v in learn.recorder.values[-1])

def test_callback_mixes_the_batch():
    from openmixup_nb.saliency import gradient_saliency
    cb = PuzzleMixCallback(block_num=3, generator=gen(0))
    learn = Learner(synth_dls(), nn.Sequential(nn.Flatten(), nn.Linear(192, 3)), loss_func=CrossEntropyLossFlat(), cbs=cb)
    b = learn.dls.one_batch(); x0 = b[0].clone()
    learn._split(b); learn.training = True
    cb('before_train'); cb('before_batch')
    ref = puzzlemix(x0, b[1], gradient_saliency(learn.model, x0, b[1]), block_num=3, generator=gen(0))
    assert torch.equal(learn.x, ref.x) and torch.equal(cb.res.lam, ref.lam) and torch.equal(cb.res.mask, ref.mask)
    cb('after_train')

@pytest.mark.skipif(not torch.cuda.is_available(), reason='no CUDA device')
def test_cuda_matches_cpu():
    g = gen(0)
    x, y, s = torch.randn(16, 3, 32, 32, generator=g), torch.arange(16), torch.rand(16, 32, 32, generator=g)
    for grid in (2, 4, 8, 16):
        cpu = puzzlemix(x, y, s, grid=grid, generator=gen(grid))
        dev = puzzlemix(x.cuda(), y.cuda(), s.cuda(), grid=grid, generator=gen(grid))
        assert dev.x.device.type == 'cuda'
        assert torch.equal(dev.extra['labels'].cpu(), cpu.extra['labels']) and torch.equal(dev.extra['plan_a'].cpu(), cpu.extra['plan_a'])
        torch.testing.assert_close(dev.x.cpu(), cpu.x)

# ------------------------------------------------------------------------------------------ bad input
_x, _y, _s = torch.randn(4, 3, 32, 32), torch.arange(4), torch.rand(4, 32, 32)
BAD = [
    (lambda: puzzlemix(_x, _y, _s[:, :16]), ValueError, 'saliency must be a float tensor (N, H, W)'),
    (lambda: puzzlemix(_x, _y, _s.long()), ValueError, 'saliency must be a float tensor'),
    (lambda: puzzlemix(_x, _y, _s.numpy()), ValueError, 'saliency must be a float tensor'),
    (lambda: puzzlemix(_x[..., :30], _y, _s[..., :30]), ValueError, 'divisible by the grid side 16'),
    (lambda: puzzlemix(_x, _y, _s, grid=5), ValueError, 'divisible by the grid side 5'),
    (lambda: puzzlemix(_x, _y, _s, grid=1), ValueError, 'grid must be an int >= 2'),
    (lambda: puzzlemix(_x, _y, _s, block_num=1), ValueError, 'block_num'),
    (lambda: puzzlemix(_x, _y, _s, block_num=2.5), ValueError, 'block_num'),
    (lambda: puzzlemix(_x, _y, _s, n_labels=1), ValueError, 'n_labels'),
    (lambda: puzzlemix(_x, _y, _s, t_size=0), ValueError, 't_size'),
    (lambda: puzzlemix(_x, _y, _s, neigh_size=0), ValueError, 'neigh_size'),
    (lambda: puzzlemix(_x, _y, _s, transport=1), ValueError, 'transport must be True or False'),
    (lambda: puzzlemix(_x, _y, _s, solver='icm'), ValueError, 'solver must be one of'),
    (lambda: puzzlemix(_x, _y, _s, beta=-1), ValueError, 'beta'),
    (lambda: puzzlemix(_x, _y, _s, gamma=float('nan')), ValueError, 'gamma'),
    (lambda: puzzlemix(_x, _y, _s, eta=-0.1), ValueError, 'eta'),
    (lambda: puzzlemix(_x, _y, _s, t_eps=-1), ValueError, 't_eps'),
    (lambda: puzzlemix(_x, _y, _s, std=(1., 1.)), ValueError, 'std must be'),
    (lambda: puzzlemix(_x, _y, _s, std=0.), ValueError, 'std must be'),
    (lambda: puzzlemix(_x, _y, _s, mean='cifar'), ValueError, 'mean must be'),
    (lambda: puzzlemix(_x[:, :1], _y, _s), ValueError, 'mean must be given'),
    (lambda: puzzlemix(_x, _y, _s, alpha=0), ValueError, 'alpha'),
    (lambda: puzzlemix(_x, _y, _s, lam=1.5), ValueError, 'lam'),
    (lambda: puzzlemix(_x, _y, _s, index=torch.tensor([0, 1, 2, 9])), ValueError, 'index'),
    (lambda: puzzlemix(_x, _y[:3], _s), ValueError, 'labels'),
    (lambda: puzzlemix(_x[0], _y, _s), ValueError, 'dimensions'),
    (lambda: puzzlemix(_x[:, None], _y, _s), ValueError, 'N, C, H, W'),
    (lambda: puzzlemix(_x.long(), _y, _s), ValueError, 'floating-point'),
    (lambda: puzzlemix(_x, _y, _s, generator=1), ValueError, 'generator'),
    (lambda: puzzle_grid(1), ValueError, 'block_num'),
    (lambda: solve_labels(random_energy(gen(0), 1, 2, 2), 'x'), ValueError, 'solver must be one of'),
    (lambda: solve_exact(GridEnergy(torch.rand(1, 2, 2, 2), -torch.ones(1, 1, 2), torch.ones(1, 2, 1))), ValueError, 'non-negative edge weights'),
    (lambda: grid_energy(random_energy(gen(0), 1, 2, 2), torch.zeros(1, 2, 2)), ValueError, 'labels must be an integer tensor'),
    (lambda: grid_energy('e', torch.zeros(1, 2, 2, dtype=torch.long)), TypeError, 'energy must be a GridEnergy'),
    (lambda: solve_batched(GridEnergy(torch.rand(1, 3, 3, 3), torch.rand(1, 3, 3), torch.rand(1, 3, 2))), ValueError, 'edge weights must be'),
    (lambda: solve_exact(GridEnergy(torch.rand(1, 3, 3), torch.rand(1, 2, 3), torch.rand(1, 3, 2))), ValueError, 'unary must be float (B, n, n, L)'),
    (lambda: solve_batched(random_energy(gen(0), 1, 4, 3), strip=0), ValueError, 'strip must be'),
    (lambda: solve_batched(random_energy(gen(0), 1, 4, 3), sweeps=-1), ValueError, 'sweeps must be'),
    (lambda: solve_batched(random_energy(gen(0), 1, 4, 3), init=torch.zeros(1, 4, 4)), ValueError, 'init must be'),
    (lambda: PuzzleMixCallback(alpha=-1), ValueError, 'alpha'),
    (lambda: PuzzleMixCallback(solver='x'), ValueError, 'solver'),
    (lambda: PuzzleMixCallback(std=(0., 1., 1.)), ValueError, 'std must be'),
    (lambda: PuzzleMixCallback(n_labels=9), ValueError, 'n_labels'),
    (lambda: PuzzleMixCallback(p=2), ValueError, 'p must'),
]

@pytest.mark.parametrize('call, err, words', BAD, ids=[f'{i}-{w[:24]}' for i, (_, _, w) in enumerate(BAD)])
def test_bad_inputs(call, err, words):
    with pytest.raises(err) as e: call()
    assert words in str(e.value)
