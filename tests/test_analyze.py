"""`analyze` and `analysis_table` on real runs of the benchmark runner over a small CIFAR-10 folder written here (60
training and 60 test PNGs in the torchvision/fastai class-folder layout): every per-run analysis scores the model
that was trained, the figures and `analysis.json` are written, and the bad-input catalogue of the module's API.
The runs are one epoch on 60 images: their numbers mean nothing, the invariants do."""
import json, math
from pathlib import Path
import pytest, torch
from test_data import write_folder
from _helpers import _seed, _one_thread # autouse fixtures: seed 0 per test, one thread per module
from openmixup_nb.analyze import ANALYSES, RUN_ANALYSES, analyze, analysis_table, run_loader, run_model
from openmixup_nb.bench import run_benchmark
from openmixup_nb.evaluate import allow_untrained
from openmixup_nb.models import create_model

CLASSES = ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck']
SMALL = dict(corruptions='fog,contrast', severities=(1, 5), eps=(0, 2 / 255, 8 / 255), n_points=5, cam_images=3)

@pytest.fixture(scope='module')
def bench(tmp_path_factory):
    "Two runs of the benchmark runner (vanilla, mixup) with their saved models, and their analysis with every analysis"
    root = tmp_path_factory.mktemp('omnb')
    mp = pytest.MonkeyPatch(); mp.setenv('OPENMIXUP_NB_CACHE', str(root / 'cache'))
    data = root / 'cifar10'; write_folder(data, CLASSES, n=6)
    runs = run_benchmark(('vanilla', 'mixup'), out=root / 'res.json', isolate=False, verbose=False, progress=False,
                         data=str(data), epochs=1, n_train=0, n_valid=0, width=0.125, bs=20)
    res = analyze(root / 'res.json', ANALYSES, out=root / 'a', data=str(data), progress=False, **SMALL)
    yield root, str(data), runs, res
    mp.undo()

def test_every_analysis_scores_the_trained_model(bench):
    root, data, runs, res = bench
    assert [r['method'] for r in res['runs']] == ['vanilla', 'mixup']
    for run, r in zip(runs, res['runs']):
        assert r['n_test'] == 60 and r['checkpoint'] == run['checkpoint']
        assert math.isclose(r['test_top1'], run['top1_per_epoch'][-1], abs_tol=1e-3) # the saved model is the trained one
        assert r['fgsm']['0'] == r['test_top1']                                       # FGSM at eps 0: clean accuracy
        assert list(r['fgsm']) == ['0', '2', '8'] and r['fgsm']['8'] <= r['fgsm']['0']
        scan = r['landscape_1d']
        assert scan['alpha'] == [-1., -0.5, 0., 0.5, 1.] and math.isclose(scan['top1'][2], r['test_top1'], abs_tol=1e-4)
        assert sorted(r['corruption']) == ['contrast', 'fog'] and all(sorted(v) == ['1', '5'] for v in r['corruption'].values())
        cells = [a for v in r['corruption'].values() for a in v.values()]
        assert math.isclose(r['corruption_mca'], sum(cells) / len(cells), rel_tol=1e-9)
        assert 0 <= r['ece'] <= 100 and set(r['seconds']) == {'ece', 'corruption', 'fgsm', 'landscape'}

def test_figures_and_file(bench):
    root, data, runs, res = bench
    assert sorted(res['figures']) == ['cam', 'curves', 'landscape', 'tradeoff'] and res['skipped'] == ['radar']
    for f in res['figures'].values(): assert (root / 'a' / f).stat().st_size > 2000
    assert set(res['figure_seconds']) == set(res['figures'])
    saved = json.loads((root / 'a' / 'analysis.json').read_text())
    assert saved['runs'] == json.loads(json.dumps(res['runs'])) and saved['figures'] == res['figures']

def test_table(bench):
    root, data, runs, res = bench
    t = analysis_table(res)
    assert list(t.index) == ['vanilla', 'mixup'] and list(t.runs) == [1, 1]
    assert list(t.columns) == ['top1', 'ece', 'corruption mCA', 'fgsm 2/255', 'fgsm 8/255', 'runs']
    assert t.loc['mixup', 'fgsm 8/255'] == res['runs'][1]['fgsm']['8']
    assert analysis_table(root / 'a').equals(t) and analysis_table(root / 'a' / 'analysis.json').equals(t)
    per = analysis_table(res, by_method=False)
    assert list(per.index) == [('vanilla', 0), ('mixup', 0)]

def test_only_some_analyses(bench, tmp_path):
    root, data, runs, res = bench
    r = analyze(root / 'res.json', 'fgsm', out=tmp_path, data=data, eps=(0,), progress=False)
    assert set(r['runs'][0]) >= {'test_top1', 'fgsm'} and not {'ece', 'corruption', 'landscape_1d'} & set(r['runs'][0])
    assert r['figures'] == {} and sorted(p.name for p in tmp_path.iterdir()) == ['analysis.json']
    t = analysis_table(r)
    assert list(t.columns) == ['top1', 'runs']

def test_seeds_are_averaged_and_named(bench, tmp_path):
    root, data, runs, res = bench
    recs = json.loads((root / 'res.json').read_text())['runs']
    twice = [dict(recs[0], checkpoint=str(root / recs[0]['checkpoint'])), dict(recs[0], seed=1, checkpoint=str(root / recs[0]['checkpoint']))]
    r = analyze(twice, 'ece,landscape', out=tmp_path, data=data, n_points=3, progress=False)
    t = analysis_table(r)
    assert list(t.index) == ['vanilla'] and t.runs.iloc[0] == 2
    import matplotlib.image as mpimg
    assert mpimg.imread(tmp_path / 'landscape.png').shape[0] > 100

def test_untrained_checkpoint_is_refused_by_name(bench, tmp_path):
    root, data, runs, res = bench
    torch.save(create_model('resnet18', num_classes=10, width=0.125).state_dict(), tmp_path / 'fresh.pt')
    rec = dict(json.loads((root / 'res.json').read_text())['runs'][0], checkpoint='fresh.pt')
    with pytest.raises(ValueError, match=r"the model of run 'vanilla' \(seed 0\) \(fresh.pt\) has never been trained"):
        run_model(rec, tmp_path)
    with allow_untrained(): assert not run_model(rec, tmp_path).training

REC = dict(method='vanilla', dataset='cifar10', arch='resnet18', width=0.125, seed=0, top1=10., checkpoint='m.pt')
BAD = [ # (call, error type, words the message must hold)
    (lambda p: analyze(p, 'ece,plots'), ValueError, "analyses must be some of"),
    (lambda p: analyze(p, ''), ValueError, "analyses must be some of"),
    (lambda p: analyze(p, 'corruption', corruptions='snow'), ValueError, 'cannot be generated here'),
    (lambda p: analyze(p, 'corruption', corruptions='smog'), ValueError, "unknown corruption 'smog'"),
    (lambda p: analyze(p, 'corruption', corruptions=[]), ValueError, 'corruptions is empty'),
    (lambda p: analyze(p, 'corruption', corruptions=['smog'], release=p), ValueError, "unknown corruption 'smog'"),
    (lambda p: analyze(p, 'corruption', severities=0), ValueError, 'severity must be an integer in 1..5'),
    (lambda p: analyze(p, 'corruption', severities=()), ValueError, 'severities is empty'),
    (lambda p: analyze(p, 'fgsm', eps=-1 / 255), ValueError, 'eps must lie in [0, 1]'),
    (lambda p: analyze(p, 'fgsm', eps='8'), TypeError, 'eps must be a number'),
    (lambda p: analyze(p, 'landscape', n_points=1), ValueError, 'n_points must be an int >= 2'),
    (lambda p: analyze(p, 'cam', cam_images=0), ValueError, 'cam_images must be an integer >= 1'),
    (lambda p: analyze(p, 'cam', cam_images=2.5), ValueError, 'cam_images must be an integer >= 1'),
    (lambda p: analyze(p / 'nope.json'), FileNotFoundError, 'nope.json'),
    (lambda p: analyze(p / 'r.json', 'ece'), FileNotFoundError, 'its checkpoint'),
    (lambda p: analyze([dict(REC, checkpoint=None)], 'ece'), ValueError, "run 'vanilla' (seed 0) has no checkpoint"),
    (lambda p: run_model(dict(REC, dataset='mnist', checkpoint='x.pt'), p), ValueError, "unknown dataset 'mnist'"),
    (lambda p: run_model(REC, p), FileNotFoundError, 'is missing'),
    (lambda p: run_loader(dict(REC, dataset='svhn')), ValueError, 'svhn'),
    (lambda p: analysis_table(p / 'none'), FileNotFoundError, 'no analysis file'),
    (lambda p: analysis_table({'runs': []}), ValueError, 'no per-run results'),
    (lambda p: analysis_table({'runs': [dict(method='m', dataset='c', seed=0)]}), ValueError, 'no per-run results'),
]

@pytest.mark.parametrize('call, err, words', BAD, ids=[f'{i}-{w[:24]}' for i, (_, _, w) in enumerate(BAD)])
def test_bad_inputs(tmp_path, call, err, words):
    (tmp_path / 'r.json').write_text(json.dumps(dict(meta={}, runs=[REC])))
    with pytest.raises(err) as e: call(tmp_path)
    assert words in str(e.value)
    assert not (tmp_path / 'omnb_analysis').exists() or err is FileNotFoundError # option errors: before any output

def test_catalogue_covers_the_api():
    import openmixup_nb.analyze as m
    src = ' '.join(str(c.__code__.co_names) for c, _, _ in BAD)
    api = [n for n in m.__all__ if callable(getattr(m, n)) and n != 'omnb_analyze'] # the command: tests/test_analyze_cli.py
    assert all(n in src for n in api), [n for n in api if n not in src]
