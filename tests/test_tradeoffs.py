"""Training curves and trade-offs: results files and records read defensively (including records with only the keys
the bench writes), the per-method table, the three figures, and the bad-input catalogue of every public function.
All on synthetic records written here: illustrative numbers, not results."""
import json, math
import matplotlib
matplotlib.use('Agg')
import matplotlib.pyplot as plt
import numpy as np, pandas as pd, pytest
from _helpers import bad_input_tests
import openmixup_nb.tradeoffs as _mod
from openmixup_nb.tradeoffs import load_results, results_table, plot_curves, plot_tradeoff, plot_radar

def records(datasets=('cifar10', 'cifar100', 'tiny'), methods=('vanilla', 'mixup', 'samix'), seeds=(0, 1), epochs=4, loss=True):
    "Synthetic run records with the bench's keys (and, with `loss`, a per-epoch train loss the bench does not write)"
    out = []
    for d, ds in enumerate(datasets):
        for k, m in enumerate(methods):
            for s in seeds:
                curve = [round(10 + (50 + 10 * d + k + 0.1 * s) * (e + 1) / epochs, 2) for e in range(epochs)]
                r = dict(method=m, alpha=None if m == 'vanilla' else 1., seed=s, dataset=ds, arch='resnet18', width=0.25,
                         epochs=epochs, n_train=100, n_valid=100, top1=curve[-1], top1_last_epochs=1, top1_best=max(curve),
                         top1_per_epoch=curve, train_loss=2. - 0.1 * k, wall_s=12. * (k + 1), train_s=10. * (k + 1),
                         train_cpu_s=9. * (k + 1) + s, train_img_s=100., train_s_per_epoch=[2.5] * epochs,
                         train_cpu_s_per_epoch=[2.] * epochs, peak_mem_mib=500. + 100 * k, mem_kind='cpu_peak_rss',
                         device='cpu', threads=1)
                if loss: r['train_loss_per_epoch'] = [2.5 - 0.1 * e for e in range(epochs)]
                out.append(r)
    return out

def test_load_from_every_source(tmp_path):
    recs = records()
    p = tmp_path/'omnb_results.json'
    p.write_text(json.dumps(dict(meta=dict(torch='2', threads=1), runs=recs)))
    (tmp_path/'list.json').write_text(json.dumps(recs))
    for src in (recs, tuple(recs), dict(runs=recs), p, str(p), tmp_path, tmp_path/'list.json'):
        df = load_results(src)
        assert len(df) == len(recs) and list(df.method.unique()) == ['vanilla', 'mixup', 'samix']
    assert load_results(p).attrs['meta'] == dict(torch='2', threads=1)
    df = load_results(p)
    again = load_results(df)
    assert again.attrs['meta'] == df.attrs['meta'] and len(again) == len(df)

def test_defensive_defaults():
    df = load_results([dict(method='a', top1=50.), dict(method='b', top1=60, peak_mem_mib=None, extra='kept'),
                       dict(method='c', top1=70., train_loss=[2., 1.5])])
    for col in ('dataset', 'arch', 'seed', 'top1_per_epoch', 'train_loss_per_epoch', 'train_s', 'train_cpu_s', 'peak_mem_mib'):
        assert col in df, col
    assert df.dataset.tolist() == ['(unknown)'] * 3 and math.isnan(df.peak_mem_mib[1]) and df.extra[1] == 'kept'
    assert df.train_loss_per_epoch[2] == [2., 1.5] and df.train_loss[2] == 1.5 and df.train_loss_per_epoch[0] is None

def test_results_table():
    t = results_table(records())
    assert t.attrs['time'] == 'train_cpu_s' and (t.runs == 2).all() and len(t) == 9
    assert t.loc[('cifar10', 'resnet18', 'mixup'), 'train_cpu_s'] == pytest.approx(18.5)
    assert t.loc[('cifar10', 'resnet18', 'mixup'), 'top1_std'] == pytest.approx(np.std([61., 61.1], ddof=1), abs=1e-6)
    assert results_table(records(), time='train_s').attrs['time'] == 'train_s'
    gpu = [dict(r, device='cuda:0') for r in records()]
    assert results_table(gpu).attrs['time'] == 'train_s' # wall clock off a CPU
    assert results_table(records(seeds=(0,))).top1_std.eq(0).all()

def test_curves():
    fig = plot_curves(records(datasets=('cifar10', 'cifar100')))
    assert len(fig.axes) == 4 # top-1 and train loss, two datasets
    assert len(fig.axes[0].lines) == 3
    fig = plot_curves(records(datasets=('cifar10',), loss=False))
    assert len(fig.axes) == 1 and 'not in these records' in fig.texts[0].get_text()
    uneven = records(datasets=('cifar10',), seeds=(0,)) + [dict(records(datasets=('cifar10',), seeds=(1,))[0], top1_per_epoch=[10., 20.])]
    assert len(plot_curves(uneven).axes) == 2 # runs of different lengths: NaN-padded
    plt.close('all')

def test_tradeoff():
    fig = plot_tradeoff(records())
    assert len(fig.axes) == 3 and {a.get_title() for a in fig.axes} == {'cifar10, resnet18', 'cifar100, resnet18', 'tiny, resnet18'}
    assert 'CPU time' in fig.axes[0].get_xlabel()
    assert [t.get_text() for t in fig.axes[0].texts] == ['vanilla\n500 MiB', 'mixup\n600 MiB', 'samix\n700 MiB']
    assert 'peak memory (peak RSS, CPU)' in fig._suptitle.get_text()
    no_mem = [{k: v for k, v in r.items() if k != 'peak_mem_mib'} for r in records(datasets=('cifar10',))]
    fig = plot_tradeoff(no_mem, time='train_s')
    assert len(fig.axes) == 1 and fig._suptitle is None and 'wall clock' in fig.axes[0].get_xlabel()
    assert [t.get_text() for t in fig.axes[0].texts] == ['vanilla', 'mixup', 'samix']
    plt.close('all')

def test_radar():
    fig = plot_radar(records())
    ax = fig.axes[0]
    assert ax.name == 'polar' and len(ax.lines) == 3
    assert [t.get_text().split('\n')[0] for t in ax.get_xticklabels()] == ['cifar10', 'cifar100', 'tiny']
    best = max(ax.lines, key=lambda l: l.get_ydata().mean())
    assert best.get_label() == 'samix' and np.allclose(best.get_ydata(), 1) # the best method at the rim of every axis
    fig = plot_radar(records() + [dict(method='fmix', dataset='cifar10', arch='resnet18', top1=50.)], normalize=False)
    assert len(fig.axes[0].lines) == 3 and 'fmix' in fig.texts[0].get_text()
    plt.close('all')

RECS = records()
BAD = [ # (call, error type, words the message must hold)
    (lambda: load_results('/no/such/omnb_results.json'), FileNotFoundError, 'no results file'),
    (lambda: load_results([]), ValueError, 'no runs'),
    (lambda: load_results(dict(runs=[])), ValueError, 'no runs'),
    (lambda: load_results(dict(meta={})), ValueError, "'runs' list"),
    (lambda: load_results(dict(runs='x')), ValueError, "'runs' list"),
    (lambda: load_results([dict(top1=5.)]), ValueError, 'run 0 has no method'),
    (lambda: load_results([dict(method='m')]), ValueError, 'run 0 has no top1'),
    (lambda: load_results([dict(method='m', top1=float('nan'))]), ValueError, 'no top1'),
    (lambda: load_results([dict(method='m', top1='91')]), ValueError, 'percentage'),
    (lambda: load_results([dict(method='m', top1=-1.)]), ValueError, 'percentage'),
    (lambda: load_results([dict(method='m', top1=True)]), ValueError, 'percentage'),
    (lambda: load_results([dict(method='m', top1=5.), 3]), ValueError, 'run 1 is a int'),
    (lambda: load_results(3.5), TypeError, 'a path'),
    (lambda: load_results(pd.DataFrame()), ValueError, 'no runs'),
    (lambda: results_table(RECS, time='hours'), ValueError, "'auto' or one of"),
    (lambda: results_table([dict(method='m', top1=5.)]), ValueError, 'training time'),
    (lambda: results_table([]), ValueError, 'no runs'),
    (lambda: plot_curves([dict(method='m', top1=5.)]), ValueError, 'per-epoch top-1'),
    (lambda: plot_curves([]), ValueError, 'no runs'),
    (lambda: plot_tradeoff(RECS, ncols=0), ValueError, 'ncols'),
    (lambda: plot_tradeoff(RECS, ncols=1.5), ValueError, 'ncols'),
    (lambda: plot_tradeoff(RECS, time='x'), ValueError, "'auto' or one of"),
    (lambda: plot_tradeoff([dict(method='m', top1=5.)]), ValueError, 'training time'),
    (lambda: plot_radar(records(datasets=('cifar10',))), ValueError, 'at least 3 axes (datasets); these results have 1: cifar10'),
    (lambda: plot_radar(records(datasets=('a', 'b'))), ValueError, 'at least 3 axes'),
    (lambda: plot_radar(RECS + [dict(RECS[0], arch='wrn')]), ValueError, 'several archs'),
    (lambda: plot_radar([dict(r, method=r['dataset']) for r in RECS]), ValueError, 'every dataset'),
    (lambda: plot_radar([]), ValueError, 'no runs'),
]

test_bad_inputs, test_catalogue_covers_the_api = bad_input_tests(BAD, _mod)

def test_bad_files(tmp_path):
    (tmp_path/'omnb_results.json').write_text('{"runs": [')
    with pytest.raises(ValueError, match='cannot be read as JSON'): load_results(tmp_path)
    with pytest.raises(ValueError, match='without an omnb_results.json'): load_results(tmp_path/'empty' if (tmp_path/'empty').mkdir() is None else None)
    (tmp_path/'bin.json').write_bytes(b'\xff\xfe\x00')
    with pytest.raises(ValueError, match='cannot be read'): load_results(tmp_path/'bin.json')

