"`omnb_bench --help` says what each flag does and lists every method the benchmark knows"
import re, shutil, subprocess, sys
from pathlib import Path
import pytest
from openmixup_nb.bench import METHODS

@pytest.fixture(scope='module')
def help_text():
    exe = shutil.which('omnb_bench') or str(Path(sys.executable).parent/'omnb_bench')
    if not Path(exe).exists(): pytest.skip('omnb_bench not installed')
    return re.sub(r'\s+', ' ', subprocess.run([exe, '--help'], capture_output=True, text=True, timeout=300).stdout)

def test_help_lists_every_method(help_text):
    listed = re.search(r'--methods \(str\) comma-separated, of: (.*?) \(default', help_text).group(1)
    assert [m.strip() for m in listed.split(',')] == list(METHODS)

def test_negative_flags_describe_what_they_do(help_text):
    iso = re.search(r'--no-isolate (.*?) \(default', help_text).group(1)
    prog = re.search(r'--no-progress (.*?) \(default', help_text).group(1)
    assert '--no-isolate: all runs in this process' in iso
    assert '--no-progress: none' in prog

def _exe():
    exe = shutil.which('omnb_bench') or str(Path(sys.executable).parent/'omnb_bench')
    if not Path(exe).exists(): pytest.skip('omnb_bench not installed')
    return exe

@pytest.mark.parametrize('args, msg', [(['--methods', 'vanilla,nomix'], "unknown method 'nomix'; available: vanilla, "),
                                       (['--epochs', '0'], 'epochs must be an integer >= 1, got 0'),
                                       (['--out', '/nonexistent-folder/r.json'], 'cannot write results file')])
def test_bad_input_is_one_line_on_stderr(tmp_path, args, msg):
    "Exit code 1, one line, no traceback, no warnings: checked before any data is read or run is started"
    r = subprocess.run([_exe(), *args], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 1 and r.stdout == ''
    assert r.stderr.count('\n') == 1 and r.stderr.startswith('omnb_bench: error: ') and msg in r.stderr, r.stderr

def test_import_silences_only_the_jit_warning(tmp_path):
    "Importing fastai warns that `torch.jit.script` is deprecated; the benchmark's import silences that, at its call site"
    def py(code):
        (tmp_path/'t.py').write_text(code) # a file: torch.jit.script reads the source
        return subprocess.run([sys.executable, '-W', 'always', str(tmp_path/'t.py')], capture_output=True, text=True, timeout=300).stderr
    warning = '`torch.jit.script` is deprecated'
    if warning not in py('import fastai.learner'): pytest.skip('this torch no longer warns')
    assert warning not in py('import openmixup_nb.bench')
    # the filter is scoped to the import: a later call of torch.jit.script still warns
    err = py('import torch, openmixup_nb.bench\ndef f(x: torch.Tensor): return x + 1\ntorch.jit.script(f)\n')
    assert warning in err and 'Traceback' not in err, err
