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
