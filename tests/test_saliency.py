"""`gradient_saliency`: the closed form on linear models, invariance of the model (parameters, gradients, BatchNorm
statistics, training flags, requires_grad), fastai types and Learners, and the bad-input catalogue."""
import pytest, torch
import torch.nn.functional as F
from torch import nn
from hypothesis import given, settings, strategies as st
from _helpers import _seed, _one_thread, gen, bad_input_tests # autouse fixtures: seed 0 per test, one thread per module
import openmixup_nb.saliency as _mod
from openmixup_nb.saliency import gradient_saliency
from openmixup_nb.models import create_model

@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 5), c=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6), k=st.integers(2, 6),
       seed=st.integers(0, 2**31 - 1), soft=st.booleans())
def test_linear_closed_form(n, c, h, w, k, seed, soft):
    g = gen(seed)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k)).double()
    x = torch.randn(n, c, h, w, generator=g, dtype=torch.float64)
    t = torch.rand(n, k, generator=g, dtype=torch.float64) if soft else torch.randint(0, k, (n,), generator=g)
    p = lin(x).softmax(1)
    tt = t if soft else F.one_hot(t, k).double()
    grad = (p * tt.sum(1, keepdim=True) - tt) @ lin[1].weight / n # d/dz of the batch-mean -sum_c t_c log p_c
    ref = grad.view(n, c, h, w).square().mean(1).sqrt().float()
    torch.testing.assert_close(gradient_saliency(lin, x, t), ref, rtol=1e-5, atol=1e-7)

def test_model_left_exactly_as_it_was():
    net = create_model('resnet18', num_classes=10, width=0.125).train()
    for p in list(net.parameters())[:3]: p.requires_grad_(False) # partly frozen
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    s = gradient_saliency(net, x, y)
    assert s.shape == (4, 32, 32) and s.dtype == torch.float32 and not s.requires_grad
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert all(p.grad is None for p in net.parameters()) and net.training
    assert [p.requires_grad for p in net.parameters()][:4] == [False, False, False, True]
    assert not x.requires_grad

def test_fastai_types_and_learner():
    from fastai.torch_core import TensorImage, TensorCategory
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader as FDL
    lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    x, y = torch.randn(5, 3, 2, 2), torch.randint(0, 3, (5,))
    ref = gradient_saliency(lin, x, y)
    torch.testing.assert_close(gradient_saliency(lin, TensorImage(x), TensorCategory(y)), ref)
    ds = list(zip(x, y))
    learn = Learner(DataLoaders(FDL(ds, bs=5), FDL(ds, bs=5)), lin, loss_func=nn.CrossEntropyLoss())
    torch.testing.assert_close(gradient_saliency(learn, x, y), ref)
    with torch.no_grad(): torch.testing.assert_close(gradient_saliency(lin, x, y), ref) # gradients switched on inside

_lin = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
_x, _y = torch.randn(5, 3, 2, 2), torch.randint(0, 3, (5,))
BAD = [
    (lambda: gradient_saliency(_lin, _x.byte(), _y), ValueError, 'float image batch'),
    (lambda: gradient_saliency(_lin, _x[0], _y), ValueError, 'float image batch'),
    (lambda: gradient_saliency(_lin, [[1.]], _y), ValueError, 'float image batch'),
    (lambda: gradient_saliency(_lin, _x, _y[:2]), ValueError, 'class indices (N,) or soft targets'),
    (lambda: gradient_saliency(_lin, _x, _y.float()), ValueError, 'class indices (N,) or soft targets'),
    (lambda: gradient_saliency(_lin, _x, None), ValueError, 'class indices (N,) or soft targets'),
    (lambda: gradient_saliency(_lin, _x, _y[:, None, None]), ValueError, 'class indices (N,) or soft targets'),
    (lambda: gradient_saliency(_lin, _x, torch.rand(5, 4)), ValueError, 'soft targets have 4 classes'),
    (lambda: gradient_saliency(nn.Identity(), _x, _y), ValueError, 'must return logits'),
    (lambda: gradient_saliency(_lin, _x.to('meta'), _y), ValueError, 'x is on meta'),
    (lambda: gradient_saliency('net', _x, _y), TypeError, 'nn.Module'),
]

test_bad_inputs, test_catalogue_covers_the_api = bad_input_tests(BAD, _mod)

