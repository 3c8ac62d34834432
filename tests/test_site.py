"""What a reader of the docs site meets, checked without Quarto: on the notebooks as committed and as
`nbdev-proc-nbs` processes them. Clean outputs (no stderr, errors, progress bars, raw recorder lists or object
reprs standing in for tables and figures), an H2 on every page, a sidebar in sections that lists every page
once, doc links that land on an entry, parameter comments beside their parameters, and diagrams laid out to
be read at the column's width."""
import importlib, inspect, io, json, re, tokenize
from pathlib import Path
import pytest
from nbdev.config import nbpath2html

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT/'nbs'
SITE = 'https://openmixup-nb.github.io/openmixup_nb/'
NOTEBOOKS = sorted(NBS.rglob('*.ipynb'))
def _id(p): return str(p.relative_to(NBS))

# Pages whose kept outputs come from slow cells that have not been re-run since the check was written; each
# entry says what is wrong and what re-running needs. The xfail is strict: once fixed, the entry must go.
KNOWN = {
}

def _nb(p): return json.loads(p.read_text())

# --- outputs --------------------------------------------------------------------------------------------------
_BAR = re.compile(r'█|\|[-█]{10,}\||\d+\.\d+% \[\d+/\d+')
_RECORDER = re.compile(r"^\[\d+, [-\d.e]+, .*'\d\d:\d\d'\]$", re.M)  # fastai's logger printing epochs as lists
_REPR = re.compile(r'^<[\w.]+(?: object)? at 0x[0-9a-f]+>$|^<pandas\.io\.formats\.style\.Styler[^>]*>$|^<Figure size [^>]*>$|'
                   r'^<IPython\.core\.display\.\w+ object>$')
_WIDE = 100 # characters: a text line wider than this is cut at the column's edge

def output_problems(nb:dict)->list:
    "What a reader should not see in a notebook's kept outputs: (cell index, problem)"
    bad = []
    for i, c in enumerate(nb['cells']):
        for o in c.get('outputs', []):
            kind = o.get('output_type')
            if kind == 'error': bad.append((i, 'error output'))
            if kind == 'stream':
                text = ''.join(o.get('text', ''))
                if o.get('name') == 'stderr': bad.append((i, f'stderr: {text[:80]!r}'))
                if _BAR.search(text): bad.append((i, 'progress bar'))
                if _RECORDER.search(text): bad.append((i, 'raw recorder lists'))
                if re.search(r'^\s*[\[{]\s*$', text, re.M) and text.count('\n') > 8: bad.append((i, 'a JSON/list dump for a table'))
                if any(len(l) > _WIDE for l in text.splitlines()) and re.search(r'\S  +\S.*\S  +\S', text):
                    bad.append((i, 'a text table wider than the column'))
            data = o.get('data', {})
            plain = ''.join(data.get('text/plain', '')).strip()
            rich = set(data) - {'text/plain'}
            if plain and not rich and _REPR.match(plain): bad.append((i, f'object repr for a table/figure: {plain[:60]}'))
            if _BAR.search(''.join(data.get('text/html', ''))): bad.append((i, 'progress bar (html)'))
    return bad

def _param(nb):
    rel = _id(nb)
    marks = [pytest.mark.xfail(reason=KNOWN[rel], strict=True)] if rel in KNOWN else []
    return pytest.param(nb, id=rel, marks=marks)

@pytest.mark.parametrize('nb', [_param(p) for p in NOTEBOOKS])
def test_outputs_clean(nb):
    assert output_problems(_nb(nb)) == []

def test_output_checks_catch_what_they_name():
    "Each check fails on a sample of what it looks for, and passes plain results"
    def nb(*outs): return {'cells': [{'cell_type': 'code', 'source': '', 'outputs': list(outs)}]}
    st = lambda t, name='stdout': {'output_type': 'stream', 'name': name, 'text': t}
    er = lambda t: {'output_type': 'execute_result', 'data': {'text/plain': t}}
    assert output_problems(nb(st('UserWarning: x\n', 'stderr')))
    assert output_problems(nb(st(' |████████----------------------| 50.00% [1/2 00:00<00:00]')))
    assert output_problems(nb(st("[0, 6.906252384185791, 2.09, 0.19, 0.08, '00:34']\n")))
    assert output_problems(nb(er('<pandas.io.formats.style.Styler at 0x7f00deadbeef>')))
    assert output_problems(nb(er('<Figure size 640x480 with 1 Axes>')))
    assert output_problems(nb({'output_type': 'error', 'ename': 'E', 'evalue': '', 'traceback': []}))
    assert output_problems(nb(st('a' * 20 + '   ' + 'b' * 50 + '   ' + 'c' * 40 + '\n')))
    assert not output_problems(nb(st('share of the EMA: 78%\n'), er("{'method': 'mixup', 'top1': 8.0}"),
                                  {'output_type': 'display_data', 'data': {'image/png': '', 'text/plain': '<Figure size 640x480 with 1 Axes>'}}))

# --- headings, sidebar, diagrams -------------------------------------------------------------------------------
def _markdown(nb): return [''.join(c['source']) for c in _nb(nb)['cells'] if c['cell_type'] == 'markdown']
def _strip_code(s): return re.sub(r'```.*?```', '', s, flags=re.S)

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=_id)
def test_every_page_has_h2(nb):
    "The 'On this page' list and the search index need sections"
    assert any(re.search(r'^## \S', _strip_code(m), re.M) for m in _markdown(nb)), f'{_id(nb)} has no H2 section'

def _sidebar_entries(node):
    if isinstance(node, str): return [node]
    if isinstance(node, list): return [e for n in node for e in _sidebar_entries(n)]
    if isinstance(node, dict): return _sidebar_entries(node.get('contents', [])) + ([node['href']] if 'href' in node else [])
    return []

def test_sidebar_in_sections_lists_every_page_once():
    yaml = pytest.importorskip('yaml')
    sb = yaml.safe_load((NBS/'sidebar.yml').read_text())['website']['sidebar']['contents']
    entries = _sidebar_entries(sb)
    assert sorted(entries) == sorted(_id(p) for p in NOTEBOOKS), 'sidebar.yml and the notebooks under nbs/ differ'
    assert len(entries) == len(set(entries))
    sections = [n for n in sb if isinstance(n, dict)]
    assert len(sections) >= 6 and all(n['section'][0].isupper() for n in sections)
    assert sb[0] == 'index.ipynb'
    # the folders tell the same story: every section's pages live in one folder, and no folder is split
    for s in sections:
        assert len({Path(e).parent for e in _sidebar_entries(s)}) == 1, s['section']
    try: import tomllib
    except ImportError: import tomli as tomllib
    assert tomllib.loads((ROOT/'pyproject.toml').read_text())['tool']['nbdev']['custom_sidebar'] is True

@pytest.mark.parametrize('nb', NOTEBOOKS, ids=_id)
def test_diagrams_read_top_down(nb):
    "A left-to-right chart is shrunk to the column's width until its text is unreadable"
    for m in _markdown(nb):
        for d in re.findall(r'```\{mermaid\}\n(.*?)```', m, re.S):
            head = d.strip().splitlines()[0].split()
            assert head[0] in ('flowchart', 'graph') and head[1] in ('TD', 'TB'), f'{_id(nb)}: {head}'
            assert max(len(re.sub(r'<[^>]+>', '', l)) for seg in re.findall(r'"([^"]*)"', d) for l in seg.split('<br/>')) <= 60

# --- API reference ----------------------------------------------------------------------------------------------
def _modidx():
    from openmixup_nb._modidx import d
    return d['syms']

def _documented():
    "Every function, class and method of the API reference (`_modidx`), as objects"
    out = []
    for mod, syms in _modidx().items():
        m = importlib.import_module(mod)
        for name in syms:
            obj = m
            try:
                for part in name[len(mod)+1:].split('.'): obj = getattr(obj, part)
            except AttributeError: continue
            obj = inspect.unwrap(getattr(obj, '__func__', obj))
            if inspect.isfunction(obj) or inspect.isclass(obj): out.append((name, obj))
    return out

def comment_after_return(src:str)->list:
    "Lines where a `def`'s last parameter comment sits after `)` / the return annotation (docments reads it as the return's)"
    bad, toks = [], list(tokenize.generate_tokens(io.StringIO(src).readline))
    for k, t in enumerate(toks):
        if t.type != tokenize.NAME or t.string != 'def': continue
        depth, j, start = 0, k, t.start[0]
        while j < len(toks):
            s = toks[j].string
            if s in '([{' and toks[j].type == tokenize.OP: depth += 1
            elif s in ')]}' and toks[j].type == tokenize.OP: depth -= 1
            elif s == ':' and depth == 0 and toks[j].type == tokenize.OP: break
            j += 1
        if j >= len(toks) or toks[j].start[0] == start: continue # one-line signature: nothing to mix up
        end = toks[j].start[0]
        c = next((x for x in toks[j:] if x.start[0] == end and x.type == tokenize.COMMENT), None)
        # a parameter on the closing line makes its comment ambiguous; `)->T: # ...` alone on its line describes the return
        param = any(x.type == tokenize.NAME for x in toks[k:j] if x.start[0] == end and x.start[1] < toks[j].start[1]
                    and not any(y.string == '->' and y.start[0] == end and y.start[1] < x.start[1] for y in toks[k:j]))
        if c and param and not c.string.lstrip('# ').lower().startswith('return'): bad.append(end)
    return bad

def test_signature_check_catches_a_comment_after_the_return():
    assert comment_after_return("def f(a, # a\n      b)->int: # b's comment\n    pass\n") == [2]
    assert comment_after_return("def f(a, # a\n      b, # b\n)->int:\n    pass\n") == []
    assert comment_after_return("def f(a, # a\n      b)->int: # returns the count\n    pass\n") == []
    assert comment_after_return("def f(a, # a\n      **kw)->int: # passed on\n    pass\n") == [2]
    assert comment_after_return("def f(a, # a\n)->tuple[int, int]: # the pair\n    pass\n") == []

def test_parameter_comments_beside_their_parameters():
    bad = []
    for name, obj in _documented():
        try: src = inspect.getsource(obj)
        except (OSError, TypeError): continue
        src = inspect.cleandoc('\n' + src) if src.startswith((' ', '\t')) else src
        if inspect.isclass(obj):
            init = obj.__dict__.get('__init__')
            if init is None: continue
            try: src = inspect.cleandoc('\n' + inspect.getsource(init))
            except (OSError, TypeError): continue # generated (fastai's funcs_kwargs): no signature of ours
        if comment_after_return(src): bad.append(name)
    assert bad == []

def test_signatures_show_what_a_user_calls():
    "fastai's Callback takes every event hook as a keyword; a documented callback shows its own parameters"
    from fastai.callback.core import Callback
    bad = [n for n, o in _documented() if inspect.isclass(o) and issubclass(o, Callback)
           and 'after_create' in inspect.signature(o).parameters]
    assert bad == []

# --- doc links ---------------------------------------------------------------------------------------------------
def _anchor(heading:str)->str:
    "Pandoc's identifier for a heading, as Quarto makes it"
    t = re.sub(r'<[^>]+>', '', heading); t = re.sub(r'\[([^\]]*)\]\([^)]*\)', r'\1', t); t = re.sub(r'[`*]', '', t)
    t = re.sub(r'[^\w\s.-]', '', t.strip().lower()); t = re.sub(r'\s+', '-', t)
    return re.sub(r'^[^a-z_]+', '', t)

def _page(p:Path, root:Path)->str: return nbpath2html(p.relative_to(root)).as_posix() # nbdev's own page name

def broken_links(proc:Path)->list:
    "Links into the site, in processed notebooks, whose page or anchor does not exist: (page, link)"
    anchors, links = {}, []
    for nb in proc.rglob('*.ipynb'):
        page, found = _page(nb, proc), set()
        for c in _nb(nb)['cells']:
            texts = [''.join(c['source'])] if c['cell_type'] == 'markdown' else []
            texts += [''.join(o.get('data', {}).get('text/markdown', '')) for o in c.get('outputs', [])]
            for s in texts:
                found |= {_anchor(h) for h in re.findall(r'^#{1,6} (.*?)\s*$', _strip_code(s), re.M)}
                links += [(page, l) for l in re.findall(r'\]\((%s[^)\s]*)\)' % re.escape(SITE), s)]
        anchors[page] = found
    bad = []
    for page, l in links:
        target, _, anchor = l[len(SITE):].partition('#')
        if target not in anchors or (anchor and anchor not in anchors[target]): bad.append((page, l))
    return sorted(set(bad))

def test_doc_links_land_on_entries(proc_nbs):
    proc, out = proc_nbs
    assert 'Traceback' not in out, out[-3000:]
    assert broken_links(proc) == []
    assert len(list(proc.rglob('*.ipynb'))) == len(NOTEBOOKS)

def test_link_check_catches_a_missing_anchor(tmp_path):
    (tmp_path/'core').mkdir()
    cell = lambda s: {'cell_type': 'markdown', 'source': s}
    (tmp_path/'core'/'01_core.ipynb').write_text(json.dumps({'cells': [cell('### MixResult.loss\n'),
        cell(f'see [`mix`]({SITE}core/core.html#mixresult.loss) and [`x`]({SITE}core/core.html#_mask_mix)')]}))
    assert broken_links(tmp_path) == [('core/core.html', f'{SITE}core/core.html#_mask_mix')]
