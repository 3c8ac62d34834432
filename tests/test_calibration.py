"""Calibration: `ece` against a hand-computed case and a plain-torch reference on the same random logits, the bins
and table built on it, models and Learners as inputs, and the bad-input catalogue of every public function."""
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import pytest, torch, torch.nn as nn
from openmixup_nb.calibration import (check_logits, ece, ece_of, calibration_bins, reliability_diagram, gather_predictions,
                                      plot_reliability, calibration_table)
from _helpers import gen, _seed, _one_thread, bad_input_tests # autouse fixtures: seed 0 per test, one thread per module
import openmixup_nb.calibration as _mod

def reference_ece(logits, labels, n_bins=15):
    "ECE in % as Guo et al. (2017) write it: float64, bins (k/B, (k+1)/B], a loop over bins (the reference, tests only)"
    p = logits.double().softmax(1)
    conf, pred = p.max(1)
    acc = (pred == labels).double()
    total = 0.
    for k in range(n_bins):
        m = (conf > k / n_bins) & (conf <= (k + 1) / n_bins)
        if m.any(): total += m.double().mean().item() * abs(conf[m].mean().item() - acc[m].mean().item())
    return 100 * total

# six predictions, 3 classes: confidences 0.9 (right), 0.7 (wrong), 0.7 (right), 0.5 (right), 0.45 (right), 0.95 (wrong)
P = torch.tensor([[.90, .05, .05], [.70, .20, .10], [.10, .70, .20], [.50, .30, .20], [.35, .20, .45], [.95, .03, .02]])
Y = torch.tensor([0, 1, 1, 0, 2, 2])
Z = P.log()

@pytest.mark.parametrize('n_bins, expected', [
    (5, (0.425 + 0.2 + 0.525) / 3 * 100), # bins [0.8, 1], [0.6, 0.8), [0.4, 0.6): a third each
    (1, abs(4/6 - 4.2/6) * 100),          # one bin: mean accuracy against mean confidence
    (15, (0.1 + 0.95 + 2*0.2 + 0.5 + 0.55) / 6 * 100), # width 1/15: the two 0.70s share a bin, the rest alone
    (3, (2 * abs(1 - 0.475) + 4 * abs(0.5 - 3.25/4)) / 6 * 100), # [1/3, 2/3): 0.45, 0.5; [2/3, 1]: the other four
])
def test_hand_computed(n_bins, expected):
    assert ece(Z, Y, n_bins=n_bins) == pytest.approx(expected, abs=1e-4)
    assert reference_ece(Z, Y, n_bins) == pytest.approx(expected, abs=1e-4)

@pytest.mark.parametrize('n, c, scale, n_bins, seed', [(2000, 10, 1., 15, 0), (2000, 100, 3., 15, 1), (500, 2, 2., 10, 2),
                                                       (1000, 10, 5., 1, 3), (1500, 10, 0.3, 7, 4), (10, 5, 1., 15, 5)])
def test_matches_reference(n, c, scale, n_bins, seed):
    g = gen(seed)
    z, y = scale * torch.randn(n, c, generator=g), torch.randint(0, c, (n,), generator=g)
    assert ece(z, y, n_bins) == pytest.approx(reference_ece(z, y, n_bins), abs=1e-4)

def test_saturated_confidences_in_the_last_bin():
    "Logit margins this large give float32 confidences of exactly 1, which torchmetrics alone bins apart (torchmetrics#3510)"
    g = gen(0)
    z, y = 40 * torch.randn(1000, 10, generator=g), torch.randint(0, 10, (1000,), generator=g)
    assert (z.softmax(1).max(1).values == 1).sum() > 100
    assert ece(z, y) == pytest.approx(reference_ece(z, y), abs=1e-4)
    assert calibration_bins(z, y)['count'].sum() == 1000

def test_calibrated_by_construction_and_temperature():
    g = gen(1)
    z = 2.5 * torch.randn(20_000, 10, generator=g)
    y = torch.multinomial(z.softmax(1), 1, generator=g)[:, 0]
    assert ece(z, y) < 1.5 < 10 < ece(z / 0.5, y) and ece(z / 2, y) > 10

def test_bins_add_up_to_ece():
    g = gen(2)
    z, y = 2 * torch.randn(3000, 20, generator=g), torch.randint(0, 20, (3000,), generator=g)
    b = calibration_bins(z, y, 12)
    assert len(b) == 12 and b['count'].sum() == 3000 and b.share.sum() == pytest.approx(1)
    assert 100 * (b.share * b.gap.abs()).sum() == pytest.approx(ece(z, y, 12), abs=1e-3)
    assert b.lo.iloc[0] == 0 and b.hi.iloc[-1] == 1 and b[b['count'] == 0].accuracy.isna().all()
    assert ((b.confidence.dropna() >= b.lo[b['count'] > 0]) & (b.confidence.dropna() <= b.hi[b['count'] > 0])).all()

def test_inputs_are_not_modified_and_dtypes():
    z, y = Z.clone(), Y.clone()
    for dt in (torch.float64, torch.float16, torch.bfloat16): assert ece(Z.to(dt), Y, 5) == pytest.approx(115/3, abs=0.5)
    assert ece(Z.log_softmax(1), Y[:, None].int(), 5) == pytest.approx(115/3, abs=1e-4) # log-probabilities, (N, 1) int labels
    assert torch.equal(z, Z) and torch.equal(y, Y)

def _model_and_loader():
    g = gen(3)
    z, y = 2 * torch.randn(300, 10, generator=g), torch.randint(0, 10, (300,), generator=g)
    lin = nn.Linear(10, 10, bias=False)
    with torch.no_grad(): lin.weight.copy_(torch.eye(10))
    return z, y, lin, [(z[i:i+64], y[i:i+64]) for i in range(0, 300, 64)]

def test_models_and_learners():
    from fastai.learner import Learner
    from fastai.data.core import DataLoaders
    from fastai.data.load import DataLoader
    z, y, lin, dl = _model_and_loader()
    assert ece_of(lin, dl) == pytest.approx(ece(z, y), abs=1e-4)
    learn = Learner(DataLoaders(DataLoader(list(zip(z, y)), bs=64), DataLoader(list(zip(z, y)), bs=64)), lin, loss_func=nn.CrossEntropyLoss())
    assert ece_of(learn) == pytest.approx(ece(z, y), abs=1e-4)
    t = calibration_table({'logits': (z, y), 'model': lin, 'learner': learn}, dl=dl)
    assert list(t.index) == ['logits', 'model', 'learner']
    assert t.ece.tolist() == pytest.approx([ece(z, y)] * 3, abs=1e-4)
    assert (t.ece - t.ece_over - t.ece_under).abs().max() < 1e-3
    assert t.overconfidence.tolist() == pytest.approx((t.confidence - t.top1).tolist())
    assert gather_predictions({'m': lin}, dl)['m'][0].shape == (300, 10)

def test_plots():
    z, y, lin, dl = _model_and_loader()
    ax = reliability_diagram(z, y, title='x')
    assert 'ECE' in ax.get_title()
    fig = plot_reliability({'a': (z, y), 'b': (z / 2, y), 'c': lin, 'd': (z * 2, y)}, dl=dl, ncols=3)
    assert len(fig.axes) == 4 and all(f"ECE {ece(*v, 15):.2f}%" in a.get_title() for a, v in zip(fig.axes, [(z, y), (z / 2, y)]))
    plt.close('all')

_z, _y = Z, Y
BAD = [ # (call, error type, words the message must hold)
    (lambda: ece(P, _y), ValueError, 'look like probabilities'),
    (lambda: ece(_z, _y + 1), ValueError, 'labels must lie in [0, 3)'),
    (lambda: ece(_z, _y - 1), ValueError, 'from -1'),
    (lambda: ece(_z, _y.float()), ValueError, 'class indices'),
    (lambda: ece(_z, _y > 0), ValueError, 'class indices'),
    (lambda: ece(_z, _y[:, None, None]), ValueError, 'class indices'),
    (lambda: ece(_z, _y[:4]), ValueError, 'lengths must match'),
    (lambda: ece(_z[:0], _y[:0]), ValueError, 'empty'),
    (lambda: ece(_z[:0], _y), ValueError, 'empty'),
    (lambda: ece(_z, _y, n_bins=0), ValueError, 'n_bins'),
    (lambda: ece(_z, _y, n_bins=-3), ValueError, 'n_bins'),
    (lambda: ece(_z, _y, n_bins=2.5), ValueError, 'n_bins'),
    (lambda: ece(_z, _y, n_bins=True), ValueError, 'n_bins'),
    (lambda: ece(torch.full((6, 3), float('nan')), _y), ValueError, 'NaN'),
    (lambda: ece(torch.full((6, 3), float('inf')), _y), ValueError, 'infinite'),
    (lambda: ece(_z[:, :1], _y * 0), ValueError, 'at least 2 classes'),
    (lambda: ece(_z[0], _y[:1]), ValueError, '(N, C)'),
    (lambda: ece(_z[None], _y), ValueError, '(N, C)'),
    (lambda: ece(_y.view(2, 3), _y[:2]), ValueError, 'floating point'),
    (lambda: ece(_z.tolist(), _y), TypeError, 'tensors'),
    (lambda: ece(_z, _y.tolist()), TypeError, 'tensors'),
    (lambda: check_logits(P, _y), ValueError, 'probabilities'),
    (lambda: calibration_bins(_z, _y, n_bins=0), ValueError, 'n_bins'),
    (lambda: calibration_bins(_z, _y[:2]), ValueError, 'lengths'),
    (lambda: reliability_diagram(P, _y), ValueError, 'probabilities'),
    (lambda: ece_of(nn.Linear(3, 3), [(_z, _y)], n_bins=0), ValueError, 'n_bins'),
    (lambda: ece_of(nn.Linear(3, 3)), ValueError, 'dl is needed'),
    (lambda: ece_of(nn.Sequential(nn.BatchNorm1d(3)), [(_z, _y)]), ValueError, 'has never been trained'),
    (lambda: ece_of(nn.Linear(3, 3), [(_z, None)]), ValueError, 'no labels'),
    (lambda: ece_of(nn.Linear(3, 3), []), ValueError, 'no batches'),
    (lambda: ece_of('resnet', [(_z, _y)]), TypeError, 'nn.Module'),
    (lambda: gather_predictions({}), ValueError, 'non-empty dict'),
    (lambda: gather_predictions([(_z, _y)]), ValueError, 'non-empty dict'),
    (lambda: gather_predictions({'a': (_z, _y, _y)}), ValueError, 'sequence of 3'),
    (lambda: gather_predictions({'a': 'resnet'}), TypeError, "preds['a']"),
    (lambda: gather_predictions({'a': (P, _y)}), ValueError, 'probabilities'),
    (lambda: plot_reliability({'a': (_z, _y)}, ncols=0), ValueError, 'ncols'),
    (lambda: plot_reliability({'a': (_z, _y)}, n_bins=0), ValueError, 'n_bins'),
    (lambda: plot_reliability({'a': nn.Linear(3, 3)}), ValueError, 'dl is needed'),
    (lambda: calibration_table({'a': (_z, _y)}, n_bins=0), ValueError, 'n_bins'),
    (lambda: calibration_table({'a': (_z, _y[:3])}), ValueError, 'lengths'),
]

test_bad_inputs, test_catalogue_covers_the_api = bad_input_tests(BAD, _mod)

