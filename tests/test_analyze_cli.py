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
