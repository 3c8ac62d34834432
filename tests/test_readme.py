"""The README's Python examples run as written, each in a fresh interpreter, so that they cannot drift from the
library. They need CIFAR-10 on disk: found as the README says (`OPENMIXUP_NB_DATA` in CI)."""
import os, re, subprocess, sys, time
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKS = re.findall(r"```python\n(.*?)```", (ROOT / 'README.md').read_text(), flags=re.S)

def test_readme_has_both_examples():
    assert len(BLOCKS) >= 2, "the README shows a fastai example and a plain PyTorch loop"
    assert any('Learner(' in b for b in BLOCKS) and any('for x, y in' in b for b in BLOCKS)

def _data_found():
    try:
        from openmixup_nb.data import cifar_path
        cifar_path('cifar10', download=False)
        return True
    except FileNotFoundError: return False

@pytest.mark.parametrize('i', range(len(BLOCKS)))
def test_readme_block_runs(i, tmp_path):
    if not _data_found():
        if os.environ.get('CI'): pytest.fail("CI must provide CIFAR-10 (OPENMIXUP_NB_DATA) for the README examples")
        pytest.skip("no CIFAR-10 on disk: set OPENMIXUP_NB_DATA to run the README's examples")
    env = {**os.environ, 'MPLBACKEND': 'Agg'}
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, '-c', BLOCKS[i]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"README block {i} failed:\n{BLOCKS[i]}\n--- stderr ---\n{p.stderr[-3000:]}"
    assert time.perf_counter() - t0 < 600, "a README example must finish in minutes on a CPU"
    if 'for x, y in' in BLOCKS[i]: assert re.search(r"mixed loss \d+\.\d{3}", p.stdout), p.stdout
    if 'Learner(' in BLOCKS[i]: assert 'accuracy' in p.stdout or 'accuracy' in p.stderr, p.stdout[-2000:]
