"""Offline, with no `OPENMIXUP_NB_DATA` and no CIFAR in fastai's folders: `cifar_path` fails with one message that
says where it looked and how to point it at the data, and leaves nothing behind in the home folder (fastai's
`untar_data` makes `~/.fastai/config.ini`, `archive/` and a lock file before it tries the network); `omnb_bench`
prints that message, with its `--data` flag, and exits non-zero without a traceback. Nothing here needs the network:
the download is made to fail."""
import os, subprocess, sys
from pathlib import Path
import pytest
import fastdownload.core
import fastai.data.external as fext
import openmixup_nb.data as data
from openmixup_nb.data import cifar_path

def _offline(url, *a, **k): raise ConnectionError(f"<urlopen error [Errno -2] Name or service not known> ({url})")

@pytest.fixture
def home(tmp_path, monkeypatch):
    "An empty home folder, no OPENMIXUP_NB_DATA or FASTAI_HOME, and fastai's config read afresh from there"
    h = tmp_path/'home'; h.mkdir()
    monkeypatch.setenv('HOME', str(h))
    for k in ('OPENMIXUP_NB_DATA', 'FASTAI_HOME'): monkeypatch.delenv(k, raising=False)
    fext.fastai_cfg.cache_clear()
    yield h
    fext.fastai_cfg.cache_clear()

def _tree(h): return sorted(str(p.relative_to(h)) for p in h.rglob('*'))

def test_real_untar_data_offline_leaves_nothing(home, monkeypatch):
    "fastai's own untar_data runs (it makes its config, archive folder and lock file), only the download fails"
    monkeypatch.setattr(fastdownload.core, 'download_url', _offline)
    with pytest.raises(FileNotFoundError) as e: cifar_path('cifar10')
    msg = str(e.value)
    assert '$OPENMIXUP_NB_DATA (not set)' in msg and str(home/'.fastai'/'data') in msg
    assert 'untar_data failed: ConnectionError' in msg and 'Set OPENMIXUP_NB_DATA to a folder holding cifar10' in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__ # no chained traceback
    assert _tree(home) == []

def test_untar_data_raising(home, monkeypatch):
    monkeypatch.setattr(data, 'untar_data', _offline)
    with pytest.raises(FileNotFoundError, match='Set OPENMIXUP_NB_DATA'): cifar_path('cifar100')
    with pytest.raises(FileNotFoundError, match='Set OPENMIXUP_NB_DATA'): cifar_path('cifar10', download=False)
    assert _tree(home) == [] # not even fastai's config.ini

def test_what_was_there_stays(home, monkeypatch):
    fa = home/'.fastai'; (fa/'archive').mkdir(parents=True)
    (fa/'config.ini').write_text('[DEFAULT]\ndata = data\narchive = archive\nstorage = tmp\nmodel = models\n')
    (fa/'archive'/'other.tgz').write_bytes(b'x')
    monkeypatch.setattr(fastdownload.core, 'download_url', _offline)
    with pytest.raises(FileNotFoundError): cifar_path('cifar10')
    assert _tree(home) == ['.fastai', '.fastai/archive', '.fastai/archive/other.tgz', '.fastai/config.ini']

def test_found_in_env_touches_no_fastai_config(home, tmp_path, monkeypatch):
    (tmp_path/'env'/'cifar10').mkdir(parents=True); monkeypatch.setenv('OPENMIXUP_NB_DATA', str(tmp_path/'env'))
    assert cifar_path('cifar10') == tmp_path/'env'/'cifar10' and _tree(home) == []

RUN = '''import sys
import fastdownload.core
def offline(url, *a, **k): raise ConnectionError("<urlopen error [Errno -2] Name or service not known>")
fastdownload.core.download_url = offline # the network made unreachable
from openmixup_nb.bench import omnb_bench
if __name__ == '__main__': sys.exit(omnb_bench())
'''

def test_cli_offline_one_message(tmp_path):
    h = tmp_path/'home'; h.mkdir()
    (tmp_path/'run.py').write_text(RUN) # what the console script does, with the download failing
    env = {k: v for k, v in os.environ.items() if k not in ('OPENMIXUP_NB_DATA', 'FASTAI_HOME')}
    env |= dict(HOME=str(h), MPLCONFIGDIR=str(tmp_path/'mpl'), OPENMIXUP_NB_CACHE=str(tmp_path/'cache'))
    r = subprocess.run([sys.executable, str(tmp_path/'run.py'), '--epochs', '1'], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 1
    err = r.stderr.strip()
    assert 'Traceback' not in err and 'Warning' not in err, err
    assert err.startswith('omnb_bench: error: cifar10 not found. Searched:') and len(err.splitlines()) <= 8, err
    assert 'Set OPENMIXUP_NB_DATA to a folder holding cifar10' in err and 'with --data PATH' in err
    assert _tree(h) == [] and not (tmp_path/'omnb_results.json').exists()
