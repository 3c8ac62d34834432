"Packaging: version, console script, importable modules, library in sync with the notebooks, sdist and wheel build."
import sys, subprocess, difflib, shutil, importlib, importlib.util, zipfile, tarfile, os
from configparser import ConfigParser
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # test this checkout, installed or not
import openmixup_nb

LIB = ROOT / 'openmixup_nb'
BIN = Path(sys.executable).parent
ENTRY = 'omnb_bench=openmixup_nb.bench:omnb_bench'

def settings():
    cfg = ConfigParser(delimiters=['='])
    cfg.read(ROOT / 'settings.ini', encoding='utf-8')
    return cfg['DEFAULT']

MODULES = sorted(p.stem for p in LIB.glob('*.py') if p.stem != '__init__')

def test_version_matches_settings():
    v = settings()['version']
    assert openmixup_nb.__version__ == v
    assert Path(openmixup_nb.__file__).resolve().parent == LIB  # the checkout, not some other install

def test_console_script_declared():
    assert ENTRY in settings()['console_scripts'].split()

def test_console_script_target_runs(tmp_path):
    if not (LIB / 'bench.py').exists(): pytest.skip('openmixup_nb/bench.py does not exist yet')
    from openmixup_nb.bench import omnb_bench
    assert callable(omnb_bench)
    # what the generated console script does: call it without arguments from a __main__ script, so it parses
    # sys.argv (here --help; called any other way fastcore's call_parse would start a benchmark with the defaults)
    script = tmp_path / 'omnb_bench_entry.py'
    script.write_text("import sys\nfrom openmixup_nb.bench import omnb_bench\n"
                      "if __name__ == '__main__': sys.exit(omnb_bench())\n")
    r = subprocess.run([sys.executable, str(script), '--help'], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'usage' in r.stdout.lower() and '--methods' in r.stdout

@pytest.mark.parametrize('name', MODULES)
def test_module_imports(name):
    m = importlib.import_module(f'openmixup_nb.{name}')
    assert Path(m.__file__).resolve() == LIB / f'{name}.py'
    for sym in getattr(m, '__all__', []): assert hasattr(m, sym), f'{name}.__all__ names missing {sym}'

def test_callbacks_exports():
    from openmixup_nb import callbacks
    from openmixup_nb.mixup import MixupCallback
    from openmixup_nb.cutmix import CutMixCallback
    assert {'MixupCallback', 'CutMixCallback'} <= set(callbacks.__all__)
    assert callbacks.MixupCallback is MixupCallback and callbacks.CutMixCallback is CutMixCallback
    ns = {}; exec('from openmixup_nb.callbacks import *', ns)
    assert ns['MixupCallback'] is MixupCallback and ns['CutMixCallback'] is CutMixCallback

@pytest.fixture(scope='module')
def repo_copy(tmp_path_factory):
    "The checkout's tracked and untracked, not ignored, files in a temporary folder"
    if shutil.which('git') is None or not (ROOT / '.git').exists(): pytest.skip('not a git checkout')
    files = subprocess.run(['git', 'ls-files', '-co', '--exclude-standard', '-z'], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split('\0')
    dst = tmp_path_factory.mktemp('repo')
    for f in filter(None, files):
        src = ROOT / f
        if not src.is_file(): continue  # deleted but still tracked
        (dst / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst / f)
    return dst

def lib_files(root):
    return {p.name: p.read_text(encoding='utf-8') for p in sorted((root / 'openmixup_nb').glob('*.py'))}

def test_library_in_sync_with_notebooks(repo_copy, tmp_path):
    "nbdev-export, run from scratch (generated modules deleted), reproduces openmixup_nb/*.py exactly"
    pytest.importorskip('nbdev')
    exe = BIN / 'nbdev-export'
    if not exe.exists(): exe = shutil.which('nbdev-export')
    if not exe: pytest.skip('nbdev-export not found')
    work = tmp_path / 'repo'
    shutil.copytree(repo_copy, work)
    before = lib_files(work)
    for p in (work / 'openmixup_nb').glob('*.py'):
        if p.name != '__init__.py': p.unlink()
    r = subprocess.run([str(exe)], cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    after = lib_files(work)
    assert sorted(after) == sorted(before), 'modules without a notebook, or notebooks whose module is missing'
    stale = [f for f in before if before[f] != after[f]]
    diff = ''.join(difflib.unified_diff(before[stale[0]].splitlines(True), after[stale[0]].splitlines(True),
                                        f'openmixup_nb/{stale[0]}', 'exported', n=1))[:3000] if stale else ''
    assert not stale, f'run nbdev-export: these modules differ from their notebooks: {stale}\n{diff}'

def test_build_sdist_and_wheel(repo_copy, tmp_path):
    "`python -m build --no-isolation` builds the sdist, then the wheel from the sdist; both are complete"
    pytest.importorskip('build')
    pytest.importorskip('setuptools')
    work, out = tmp_path / 'repo', tmp_path / 'dist'
    shutil.copytree(repo_copy, work)
    r = subprocess.run([sys.executable, '-m', 'build', '--no-isolation', '--outdir', str(out), str(work)],
                       cwd=work, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    cfg = settings()
    (whl,), (sdist,) = list(out.glob('*.whl')), list(out.glob('*.tar.gz'))
    assert whl.name.startswith(f"openmixup_nb-{cfg['version']}-")
    with zipfile.ZipFile(whl) as z:
        names = set(z.namelist())
        for m in MODULES + ['__init__']: assert f'openmixup_nb/{m}.py' in names
        assert not any(n.startswith(('tests/', 'nbs/')) for n in names)
        info = f"openmixup_nb-{cfg['version']}.dist-info"
        eps = z.read(f'{info}/entry_points.txt').decode()
        meta = z.read(f'{info}/METADATA').decode()
    assert '[console_scripts]' in eps and 'omnb_bench = openmixup_nb.bench:omnb_bench' in eps
    assert 'openmixup_nb = openmixup_nb._modidx:d' in eps  # nbdev's doc-link index
    assert f"Version: {cfg['version']}" in meta
    for req in cfg['requirements'].split(): assert f'Requires-Dist: {req}' in meta.replace(' (', '').replace(')', '')
    with tarfile.open(sdist) as t:
        names = {n.split('/', 1)[1] for n in t.getnames() if '/' in n}
    for f in ['setup.py', 'settings.ini', 'pyproject.toml', 'README.md', 'openmixup_nb/core.py']: assert f in names
