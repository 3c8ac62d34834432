"""`run_benchmark` / `omnb_bench` without training (a stand-in `train_one`): the results file keeps earlier runs and
appends, `overwrite` starts afresh, a bad file or argument fails before any run with a message that names it, each
run is announced, and the summary's time ratio is one of CPU time per epoch, with its quartiles."""
import functools, json, os
from pathlib import Path
import pytest
import openmixup_nb.bench as bench
from openmixup_nb.bench import run_benchmark, summarize, format_table, omnb_bench, METHODS

WORK = {'vanilla': 10., 'mixup': 10.5, 'cutmix': 10.2, 'samix': 34.} # CPU s per epoch of the stand-in runs

def _record(method, seed, epochs, slow=1.):
    cpu = [WORK.get(method, 12.) * (1 + 0.01*i) for i in range(epochs)]
    wall = [c * slow for c in cpu]
    return dict(method=method, alpha=None, seed=seed, dataset='cifar10', arch='resnet18', width=0.25, epochs=epochs,
                n_train=5000, n_valid=1000, top1=40. + seed, top1_last_epochs=1, top1_best=41., top1_per_epoch=[40.]*epochs,
                train_loss=2., wall_s=sum(wall) + 1, train_s=sum(wall), train_cpu_s=sum(cpu), train_img_s=5000*epochs/sum(wall),
                train_s_per_epoch=wall, train_cpu_s_per_epoch=cpu, peak_mem_mib=1000., mem_kind='cpu_peak_rss',
                device='cpu', threads=1)

@pytest.fixture
def calls(monkeypatch):
    "Replace training by a stand-in that records its calls; the data is never decoded"
    log = []
    @functools.wraps(bench.train_one) # keeps the signature, which run_benchmark reads
    def fake(method='vanilla', seed=0, epochs=5, verbose=False, save=None, **kw):
        log.append((method, seed))
        if verbose: print(f"  epoch {epochs}/{epochs}: top-1 40.00%")
        r = _record(method, seed, epochs)
        if save is not None: Path(save).write_text(f'{method} {seed}'); r['checkpoint'] = str(save) # as train_one does
        return r
    monkeypatch.setattr(bench, 'train_one', fake)
    monkeypatch.setattr(bench, 'cifar_tensors', lambda *a, **k: None)
    return log

def _runs(out): return [(r['method'], r['seed']) for r in json.loads(Path(out).read_text())['runs']]

# ---------------------------------------------------------------- the results file
def test_appends_by_default_and_overwrite_starts_afresh(tmp_path, calls, capsys):
    out = tmp_path/'res.json'
    first = run_benchmark(('vanilla', 'mixup'), out=out, isolate=False)
    assert _runs(out) == [('vanilla', 0), ('mixup', 0)] and len(first) == 2
    second = run_benchmark(('cutmix',), seeds=(1,), out=out, isolate=False)
    assert [r['method'] for r in second] == ['cutmix']                   # this call's runs only
    assert _runs(out) == [('vanilla', 0), ('mixup', 0), ('cutmix', 1)]   # the earlier ones kept, in order
    assert 'keeping its 2 earlier run(s)' in capsys.readouterr().out
    run_benchmark(('mixup',), out=out, overwrite=True, isolate=False)
    assert _runs(out) == [('mixup', 0)]
    assert sorted(os.listdir(tmp_path)) == ['res.json', 'res_models']    # no temporary file left

# ---------------------------------------------------------------- the saved models
def _ckpts(out): return [r.get('checkpoint') for r in json.loads(Path(out).read_text())['runs']]

def test_models_saved_beside_the_file_and_named_relative_to_it(tmp_path, calls, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_benchmark(('vanilla', 'mixup'), out='res.json', isolate=False)  # a bare file name: the folder is '.'
    assert _ckpts('res.json') == ['res_models/vanilla-s0-0.pt', 'res_models/mixup-s0-0.pt']
    assert (tmp_path/'res_models'/'mixup-s0-0.pt').read_text() == 'mixup 0'
    sub = tmp_path/'sub'; sub.mkdir()
    run_benchmark(('cutmix',), seeds=(2,), out=sub/'b.json', isolate=False)
    assert _ckpts(sub/'b.json') == ['b_models/cutmix-s2-0.pt'] and (sub/'b_models'/'cutmix-s2-0.pt').exists()

def test_appended_runs_never_replace_a_named_model(tmp_path, calls):
    out = tmp_path/'res.json'
    run_benchmark(('mixup',), out=out, isolate=False)
    run_benchmark(('mixup',), out=out, isolate=False)                   # the same method and seed again
    assert _ckpts(out) == ['res_models/mixup-s0-0.pt', 'res_models/mixup-s0-1.pt']
    assert sorted(os.listdir(tmp_path/'res_models')) == ['mixup-s0-0.pt', 'mixup-s0-1.pt']

def test_overwrite_deletes_the_dropped_runs_models_only_after_the_new_file(tmp_path, calls, monkeypatch):
    out = tmp_path/'res.json'
    run_benchmark(('vanilla', 'mixup'), out=out, isolate=False)
    (tmp_path/'res_models'/'mine.pt').write_text('a file of the user') # not named by the results file: kept
    real, seen = bench.save_results, []
    def spy(runs, o):
        seen.append(sorted(os.listdir(tmp_path/'res_models'))); real(runs, o)
    monkeypatch.setattr(bench, 'save_results', spy)
    run_benchmark(('cutmix',), out=out, overwrite=True, isolate=False)
    assert seen == [['cutmix-s0-0.pt', 'mine.pt', 'mixup-s0-0.pt', 'vanilla-s0-0.pt']] # old models still there while the old file is
    assert sorted(os.listdir(tmp_path/'res_models')) == ['cutmix-s0-0.pt', 'mine.pt']
    assert _ckpts(out) == ['res_models/cutmix-s0-0.pt']

def test_save_models_off_and_no_file_save_nothing(tmp_path, calls):
    run_benchmark(('vanilla',), out=tmp_path/'res.json', save_models=False, isolate=False)
    assert _ckpts(tmp_path/'res.json') == [None] and sorted(os.listdir(tmp_path)) == ['res.json']
    run_benchmark(('vanilla',), isolate=False)                          # no out: nothing anywhere
    assert sorted(os.listdir(tmp_path)) == ['res.json']
    with pytest.raises(TypeError, match='save'): run_benchmark(('vanilla',), save='m.pt', isolate=False)

def test_saved_after_every_run(tmp_path, calls, monkeypatch):
    out, real = tmp_path/'res.json', bench.train_one
    def dies_on_cutmix(method='vanilla', **kw):
        if method == 'cutmix': raise RuntimeError('killed')
        return real(method=method, **kw)
    monkeypatch.setattr(bench, 'train_one', functools.wraps(real)(dies_on_cutmix))
    with pytest.raises(RuntimeError): run_benchmark(('vanilla', 'mixup', 'cutmix'), out=out, isolate=False)
    assert _runs(out) == [('vanilla', 0), ('mixup', 0)]

@pytest.mark.parametrize('content, msg', [('{"runs": [', 'cannot be read'), ('[1, 2]', 'not a benchmark results file'),
                                          ('{"runs": 3}', 'not a benchmark results file'), ('{"meta": {}}', 'not a benchmark results file'),
                                          (b'\xff\xfe\x00', 'cannot be read')])
def test_unusable_results_file_fails_before_training(tmp_path, calls, content, msg):
    out = tmp_path/'res.json'
    out.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError, match=msg) as e: run_benchmark(('vanilla',), out=out, isolate=False)
    assert str(out) in str(e.value) and 'overwrite' in str(e.value)
    assert calls == [] and out.read_bytes() == (content if isinstance(content, bytes) else content.encode())
    run_benchmark(('vanilla',), out=out, overwrite=True, isolate=False)  # overwrite replaces it
    assert _runs(out) == [('vanilla', 0)]

def test_unwritable_results_file_fails_before_training(tmp_path, calls):
    with pytest.raises(ValueError, match='folder .* does not exist'): run_benchmark(('vanilla',), out=tmp_path/'no'/'r.json', isolate=False)
    (tmp_path/'d').mkdir()
    with pytest.raises(ValueError, match='is a folder'): run_benchmark(('vanilla',), out=tmp_path/'d', isolate=False)
    if os.geteuid() != 0: # root writes anywhere
        ro = tmp_path/'ro'; ro.mkdir(); ro.chmod(0o500)
        try:
            with pytest.raises(ValueError, match='cannot write results file'): run_benchmark(('vanilla',), out=ro/'r.json', isolate=False)
        finally: ro.chmod(0o700)
    assert calls == [] and not (tmp_path/'no').exists()

# ---------------------------------------------------------------- what a run says
def test_each_run_announced(tmp_path, calls, capsys):
    run_benchmark(('vanilla', 'mixup'), seeds=(0, 1), epochs=3, isolate=False)
    out = capsys.readouterr().out
    heads = [l for l in out.splitlines() if l.startswith('[')]
    assert heads == ['[1/4] vanilla, seed 0', '[2/4] mixup, seed 0', '[3/4] vanilla, seed 1', '[4/4] mixup, seed 1']
    assert out.count('  epoch 3/3: top-1') == 4
    run_benchmark(('vanilla',), isolate=False, verbose=False)
    assert capsys.readouterr().out == ''

# ---------------------------------------------------------------- bad arguments
@pytest.mark.parametrize('kw, msg', [
    (dict(methods=('vanilla', 'nomix')), 'available: vanilla'), (dict(methods=()), 'no methods'),
    (dict(methods=('mixup', 'mixup')), 'given more than once'), (dict(seeds=()), 'no seeds'), (dict(seeds=(-1,)), 'a seed must be'),
    (dict(alphas={'cutmix': 1.}), 'not among the methods'), (dict(alphas={'vanilla': 1.}), 'takes no alpha'),
    (dict(alphas={'mixup': 0.}), 'alpha of mixup'), (dict(epochs=0), 'epochs must be'), (dict(bs=0), 'bs must be'),
    (dict(epochs=2.5), 'epochs must be an integer'), (dict(n_train=-1), 'n_train must be'), (dict(width=0.), 'width must be'),
    (dict(lr=float('inf')), 'lr must be'), (dict(wd=-1e-4), 'wd must be'), (dict(last=6), 'at most epochs'),
    (dict(arch='resnet19'), "unknown arch 'resnet19'"), (dict(dataset='svhn'), "'cifar10' or 'cifar100'"),
    (dict(device='gpu'), "device 'gpu'")])
def test_bad_arguments_fail_before_training(tmp_path, calls, kw, msg):
    kw = dict(methods=('vanilla', 'mixup'), isolate=False, out=tmp_path/'r.json') | kw
    with pytest.raises(ValueError, match=msg): run_benchmark(**kw)
    assert calls == [] and not (tmp_path/'r.json').exists()

def test_unknown_keyword(calls):
    with pytest.raises(TypeError, match='n_epochs'): run_benchmark(('vanilla',), n_epochs=3)
    with pytest.raises(TypeError, match='method'): run_benchmark(('vanilla',), method='mixup')

# ---------------------------------------------------------------- the command, in this process
def test_cli_appends_and_says_so(tmp_path, calls, capsys):
    out = str(tmp_path/'omnb_results.json')
    omnb_bench(out=out, isolate=False, progress=False)
    assert f'wrote 3 runs to {out}' in capsys.readouterr().out
    omnb_bench(out=out, isolate=False, progress=False, methods='vanilla,samix')
    txt = capsys.readouterr().out
    assert f'appended 2 runs to {out} (now 5)' in txt
    table = txt[txt.index('runs top-1 %'):]
    assert 'samix' in table and 'mixup' not in table.split('cpu_x:')[0]  # the table: this invocation's runs
    assert all(len(l) <= 100 for l in table.splitlines() if out not in l), table
    omnb_bench(out=out, isolate=False, progress=False, methods='mixup', overwrite=True)
    assert f'wrote 1 run to {out}' in capsys.readouterr().out and len(_runs(out)) == 1

@pytest.mark.parametrize('kw, msg', [
    (dict(methods='vanilla,nomix'), "unknown method 'nomix'; available: "), (dict(methods=' , '), 'no methods'),
    (dict(epochs=0), 'epochs must be an integer >= 1, got 0'), (dict(seeds=0), '--seeds must be an integer >= 1'),
    (dict(width=-1.), 'width must be a finite number > 0'), (dict(n_train=-5), 'n_train must be'),
    (dict(alphas='mixup=abc'), 'method=number pairs'), (dict(alphas='mixup'), 'method=number pairs'),
    (dict(alphas='mixup=1,mixup=2'), 'given more than once'), (dict(alphas='fmix=1'), 'not among the methods'),
    (dict(out='/nonexistent-folder/r.json'), 'cannot write results file /nonexistent-folder/r.json'),
    (dict(arch='timm:no_such_net'), 'unknown timm model'), (dict(device='tpu0'), "device 'tpu0'")])
def test_cli_bad_input_one_line(tmp_path, calls, kw, msg):
    kw = dict(out=str(tmp_path/'r.json'), isolate=False) | kw
    with pytest.raises(SystemExit) as e: omnb_bench(**kw)
    text = str(e.value.code)
    assert text.startswith('omnb_bench: error: ') and msg in text and '\n' not in text, text
    assert calls == []

def test_cli_corrupt_results_file(tmp_path, calls):
    (tmp_path/'r.json').write_text('garbage')
    with pytest.raises(SystemExit) as e: omnb_bench(out=str(tmp_path/'r.json'), isolate=False)
    assert f"results file {tmp_path/'r.json'} cannot be read" in str(e.value.code) and '--overwrite' in str(e.value.code)
    assert calls == [] and (tmp_path/'r.json').read_text() == 'garbage'

# ---------------------------------------------------------------- the summary
def test_cpu_ratio_holds_under_load():
    "A run slowed threefold in wall-clock time by other programs keeps its CPU-time ratio; the wall column shows the load"
    quiet = [_record(m, 0, 5) for m in ('vanilla', 'mixup', 'samix')]
    loaded = [_record('vanilla', 0, 5), _record('mixup', 0, 5, slow=3.), _record('samix', 0, 5, slow=0.5)]
    a, b = summarize(quiet), summarize(loaded)
    assert list(a.cpu_x) == list(b.cpu_x) and a.loc['samix', 'cpu_x'] == pytest.approx(3.4, abs=0.01)
    assert b.loc['mixup', 'train_s'] == pytest.approx(3 * a.loc['mixup', 'train_s'])
    assert (a.cpu_x_q1 <= a.cpu_x).all() and (a.cpu_x <= a.cpu_x_q3).all()
    assert a.loc['vanilla', 'cpu_x'] == pytest.approx(1.)
    assert 'time_x' not in a and 'wall_x' not in a  # a wall-clock ratio would follow the load

def test_quartiles_over_epochs_and_seeds():
    runs = [dict(_record('vanilla', s, 4), train_cpu_s_per_epoch=[10.]*4) for s in (0, 1)]
    runs += [dict(_record('cutmix', 0, 4), train_cpu_s_per_epoch=[11., 12., 13., 14.]),
             dict(_record('cutmix', 1, 4), train_cpu_s_per_epoch=[15., 16., 17., 18.])]
    t = summarize(runs)
    assert t.loc['cutmix', ['cpu_x_q1', 'cpu_x', 'cpu_x_q3']].tolist() == pytest.approx([1.275, 1.45, 1.625])
    assert t.loc['cutmix', 'runs'] == 2 and t.loc['cutmix', 'top1_std'] == pytest.approx(0.707, abs=1e-3)

def test_table_at_most_100_wide():
    runs = [dict(_record(m, s, 3), top1=99.99, train_img_s=123456., peak_mem_mib=123456.) for m in METHODS for s in (0, 1)]
    runs = [dict(r, train_cpu_s_per_epoch=[1234.5]*3, train_s=99999.) for r in runs]
    txt = format_table(summarize(runs))
    assert max(len(l) for l in txt.splitlines()) <= 100, txt
    assert 'manifoldmix' in txt and "cpu_x: this process's CPU time per training epoch" in txt

def test_numpy_numbers(tmp_path, calls):
    "Seeds and settings may be numpy integers (e.g. from np.arange): the results file is still plain JSON"
    np = pytest.importorskip('numpy')
    runs = run_benchmark(('vanilla',), seeds=np.arange(2), epochs=np.int64(2), out=tmp_path/'r.json', isolate=False)
    assert [r['seed'] for r in runs] == [0, 1] and type(runs[0]['seed']) is int
    assert json.loads((tmp_path/'r.json').read_text())['runs'][1]['epochs'] == 2
