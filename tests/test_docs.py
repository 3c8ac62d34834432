"The docs and CI stay consistent: README mirrors index.ipynb, CI runs the README's commands, Quarto config is single-sourced, docs processing runs."
import ast, json, re
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'

def _cells(nb, kind):
    return [''.join(c['source']) for c in json.loads(nb.read_text())['cells'] if c['cell_type'] == kind]

def _norm(s): return re.sub(r'\s+', ' ', s).strip()

def test_readme_mirrors_index():
    readme = _norm((ROOT/'README.md').read_text())
    cells = _cells(NBS/'index.ipynb', 'markdown')
    title, summary = cells[0].splitlines()[:2]
    assert _norm(title) in readme and _norm(summary) in readme
    for c in cells[1:]: assert _norm(c) in readme, f"README.md lacks this part of nbs/index.ipynb:\n{c[:300]}"

def _sh_blocks(text): return re.findall(r'```sh\n(.*?)```', text, re.S)

def test_ci_runs_readme_commands():
    ci = (ROOT/'.ci'/'run').read_text()
    blocks = [b.strip() for b in _sh_blocks((ROOT/'README.md').read_text())]
    install = [b for b in blocks if b.startswith('pip install')]
    tests = [b for b in blocks if 'pytest' in b]
    assert install and tests
    assert install[0] in ci and tests[0] in ci

def test_quarto_config_single_source():
    q = NBS/'_quarto.yml'
    assert q.is_symlink() and q.resolve() == (ROOT/'_quarto.yml').resolve()
    text = (ROOT/'_quarto.yml').read_text()
    assert 'metadata-files: [nbdev.yml, sidebar.yml]' in text and 'styles.css' in text
    assert (NBS/'styles.css').exists()

def test_settings_and_pyproject():
    try: import tomllib
    except ImportError: import tomli as tomllib # Python 3.10 (nbdev depends on tomli there)
    py = tomllib.loads((ROOT/'pyproject.toml').read_text())
    assert py['tool']['nbdev']['lib_path'] == 'openmixup_nb'
    assert py['project']['urls']['Repository'] and py['project']['urls']['Documentation']
    assert 'slow' in py['tool']['nbdev']['tst_flags'] and 'cuda' in py['tool']['nbdev']['tst_flags']
    assert 'settings.ini' in (ROOT/'MANIFEST.in').read_text()

def _offending_cells(nb):
    "Non-exported cells holding an import and other code: nbdev would run them when building docs"
    bad = []
    for i, src in enumerate(_cells(nb, 'code')):
        if re.search(r'^#\|\s*(export|exporti|exports)\b', src, re.M) or 'nbdev_export()' in src: continue
        lines = [l for l in src.splitlines() if not l.strip().startswith(('#|', '%', '!'))]
        try: tree = ast.parse('\n'.join(lines))
        except SyntaxError: continue
        if any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(tree)) and \
           not all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body): bad.append((i, src[:80]))
    return bad

@pytest.mark.parametrize('nb', sorted(NBS.rglob('*.ipynb')), ids=lambda p: str(p.relative_to(NBS)))
def test_import_cells_hold_imports_only(nb):
    assert _offending_cells(nb) == []

@pytest.mark.parametrize('nb', sorted(NBS.rglob('*.ipynb')), ids=lambda p: str(p.relative_to(NBS)))
def test_no_machine_paths_or_errors_in_outputs(nb):
    for c in json.loads(nb.read_text())['cells']:
        for o in c.get('outputs', []):
            assert o.get('output_type') != 'error', f"{nb.name} holds an error output"
            # text only: base64 image data can spell '/tmp/' by chance
            o = {**o, 'data': {k: v for k, v in o.get('data', {}).items() if not k.startswith('image/')}}
            text = json.dumps(o)
            assert not re.search(r'/(root|tmp|work|home)/', text), f"{nb.name} output holds a machine path"

def test_proc_nbs_builds_docs_input(proc_nbs):
    "`nbdev-proc-nbs` (the docs pipeline up to Quarto) runs on every notebook with the linked _quarto.yml"
    proc, out = proc_nbs
    assert 'Traceback' not in out and 'Error' not in out.replace('ValueError', '').replace('TypeError', ''), out[-3000:]
    assert (proc/'_quarto.yml').exists() and (proc/'nbdev.yml').exists()
    for nb in NBS.rglob('*.ipynb'): assert (proc/nb.relative_to(NBS)).exists(), nb.name
