"`omnb_analyze` from the command line: installed, documented, and one clear line for what a user can fix"
import json, shutil, subprocess, sys
import pytest

def _run(*args, cwd=None):
    exe = shutil.which('omnb_analyze')
    cmd = [exe, *args] if exe else [sys.executable, '-c', 'from openmixup_nb.analyze import omnb_analyze; omnb_analyze()', *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, timeout=300)

def test_help_lists_the_analyses():
    from openmixup_nb.analyze import ANALYSES
    p = _run('--help')
    assert p.returncode == 0
    for a in ANALYSES: assert a in p.stdout

def test_missing_results_file_is_one_line(tmp_path):
    p = _run(str(tmp_path / 'nope.json'))
    assert p.returncode != 0 and 'omnb_analyze: error:' in p.stderr and 'Traceback' not in p.stderr

def test_unknown_analysis_is_one_line(tmp_path):
    (tmp_path / 'r.json').write_text(json.dumps([dict(method='vanilla', top1=50., dataset='cifar10')]))
    p = _run(str(tmp_path / 'r.json'), '--analyses', 'ece,plots')
    assert p.returncode != 0 and 'analyses must be' in p.stderr and 'Traceback' not in p.stderr

def test_run_without_checkpoint_is_one_line(tmp_path):
    (tmp_path / 'r.json').write_text(json.dumps([dict(method='vanilla', top1=50., dataset='cifar10', arch='resnet18', seed=0)]))
    p = _run(str(tmp_path / 'r.json'), '--analyses', 'ece', '--no-progress')
    assert p.returncode != 0 and 'no checkpoint' in p.stderr and 'Traceback' not in p.stderr

@pytest.mark.parametrize('flags, words', [(['--severities', '1,x'], '--severities takes comma-separated integers'),
                                          (['--severities', ','], '--severities is empty'),
                                          (['--eps', '0,abc'], '--eps takes comma-separated numbers'),
                                          (['--eps', '300'], 'eps must lie in [0, 1]'),
                                          (['--corruptions', 'snow'], 'cannot be generated here'),
                                          (['--n-points', '1'], 'n_points must be an int >= 2'),
                                          (['--cam-images', '0'], 'cam_images must be an integer >= 1')])
def test_bad_flag_values_are_one_line(tmp_path, flags, words):
    (tmp_path / 'r.json').write_text(json.dumps([dict(method='vanilla', top1=50., dataset='cifar10', arch='resnet18', seed=0)]))
    p = _run(str(tmp_path / 'r.json'), *flags, '--no-progress')
    assert p.returncode != 0 and words in p.stderr and 'Traceback' not in p.stderr, p.stderr

def test_a_real_run_end_to_end(tmp_path):
    "One run of omnb_bench on a CIFAR-10 folder written here, then omnb_analyze on its results file"
    from test_data import write_folder
    data = write_folder(tmp_path / 'cifar10', ['airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck'], n=4)
    env = dict(__import__('os').environ, OPENMIXUP_NB_CACHE=str(tmp_path / 'cache'))
    exe = shutil.which('omnb_bench')
    b = [exe] if exe else [sys.executable, '-c', 'from openmixup_nb.bench import omnb_bench; omnb_bench()']
    p = subprocess.run(b + ['--methods', 'vanilla', '--epochs', '1', '--n-train', '0', '--n-valid', '0', '--width', '0.125',
                            '--bs', '20', '--data', str(data), '--out', 'res.json', '--no-progress', '--no-isolate'],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    exe = shutil.which('omnb_analyze')
    a = [exe] if exe else [sys.executable, '-c', 'from openmixup_nb.analyze import omnb_analyze; omnb_analyze()']
    p = subprocess.run(a + ['res.json', '--analyses', 'ece,fgsm,landscape', '--eps', '0,8', '--n-points', '3', '--data', str(data),
                            '--no-progress'], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.startswith('1 run analysed (ece, fgsm, landscape); wrote omnb_analysis/analysis.json and landscape.png')
    r = json.loads((tmp_path / 'omnb_analysis' / 'analysis.json').read_text())['runs'][0]
    assert list(r['fgsm']) == ['0', '8'] and r['fgsm']['0'] == r['test_top1'] and len(r['landscape_1d']['alpha']) == 3
