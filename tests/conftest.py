"Fixtures shared across suites"
import os, shutil, subprocess, sys
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]

@pytest.fixture(scope='session')
def proc_nbs(tmp_path_factory):
    "`nbdev-proc-nbs` (the docs pipeline up to Quarto) on a copy of the tracked tree: (its `_proc` folder, what it printed)"
    exe = shutil.which('nbdev-proc-nbs') or str(Path(sys.executable).parent/'nbdev-proc-nbs')
    if not Path(exe).exists(): pytest.skip('nbdev not installed')
    tmp = tmp_path_factory.mktemp('site')
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT/f
        if not src.exists() and not src.is_symlink(): continue
        dst = tmp/f; dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink(): os.symlink(os.readlink(src), dst)
        else: shutil.copy2(src, dst)
    r = subprocess.run([exe], cwd=tmp, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=600)
    return tmp/'_proc', r.stdout + r.stderr
