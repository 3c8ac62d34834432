"Tests for openmixup_nb.data: augmentation mechanics, on-disk formats, data location. Nothing downloads."
import os, pickle, tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from hypothesis import given, settings, strategies as st

import openmixup_nb.data as data
from openmixup_nb.data import (CIFAR_STATS, CifarNormalize, CifarTensors, balanced_subset, cifar_dls, cifar_path,
                               cifar_tensors, pad_crop_flip)
from fastai.torch_core import TensorImage, TensorCategory, set_seed


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    "Every test gets its own cache folder, no OPENMIXUP_NB_DATA, a fake fastai home and a download that fails."
    monkeypatch.setenv('OPENMIXUP_NB_CACHE', str(tmp_path/'cache'))
    monkeypatch.delenv('OPENMIXUP_NB_DATA', raising=False)
    monkeypatch.setattr(data, 'fastai_path', lambda k: tmp_path/'fastai'/k)
    def _no_download(url, *a, **k): raise ConnectionError(f"download attempted: {url}")
    monkeypatch.setattr(data, 'untar_data', _no_download)


# ---------------------------------------------------------------- writers of the real on-disk formats
def _imgs(n, seed, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)

def write_folder(root, classes, n=3, ext='png', splits=('train', 'test'), nested=False):
    root = Path(root)
    for k,split in enumerate(splits):
        x = _imgs(n*len(classes), k)
        for i,im in enumerate(x):
            c = classes[i % len(classes)]
            d = root/split/(f'coarse{classes.index(c) % 2}' if nested else '')/c
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(im).save(d/f'{i:03d}.{ext}')
    return root

def write_tgz(folder, archive, arcname=None):
    with tarfile.open(archive, 'w:gz') as tf:
        for p in sorted(Path(folder).iterdir()): tf.add(p, arcname=f"{arcname}/{p.name}" if arcname else p.name)
    return Path(archive)

def write_pickles10(root, n=4):
    d = Path(root)/'cifar-10-batches-py'; d.mkdir(parents=True)
    raw = {}
    for i,f in enumerate([f'data_batch_{j}' for j in range(1, 6)] + ['test_batch']):
        x = _imgs(n, i).transpose(0, 3, 1, 2).reshape(n, 3072)
        y = [(k + i) % 10 for k in range(n)]
        raw[f] = (x, y)
        with open(d/f, 'wb') as fh:
            pickle.dump({b'batch_label': b'b', b'labels': y, b'data': x, b'filenames': [b'a.png']*n}, fh, protocol=2)
    names = [b'airplane', b'automobile', b'bird', b'cat', b'deer', b'dog', b'frog', b'horse', b'ship', b'truck']
    with open(d/'batches.meta', 'wb') as fh:
        pickle.dump({b'label_names': names, b'num_cases_per_batch': n, b'num_vis': 3072}, fh, protocol=2)
    return d, raw

def write_pickles100(root, n=12):
    d = Path(root)/'cifar-100-python'; d.mkdir(parents=True)
    raw = {}
    for i,f in enumerate(('train', 'test')):
        x = _imgs(n, i).transpose(0, 3, 1, 2).reshape(n, 3072)
        y = [int(o) for o in np.random.default_rng(i).integers(0, 100, n)]
        raw[f] = (x, y)
        with open(d/f, 'wb') as fh:
            pickle.dump({b'filenames': [b'a']*n, b'batch_label': b'b', b'fine_labels': y,
                         b'coarse_labels': [o//5 for o in y], b'data': x}, fh, protocol=2)
    with open(d/'meta', 'wb') as fh:
        pickle.dump({b'fine_label_names': [f'c{i:02d}'.encode() for i in range(100)],
                     b'coarse_label_names': [b'x']*20}, fh, protocol=2)
    return d, raw


# ---------------------------------------------------------------- augmentation
def _slow_reference(x, oy, ox, flip, pad=4):
    "torchvision-style: reflect-pad one image, crop at (oy, ox), optionally mirror."
    p = F.pad(x[None].float(), (pad,)*4, mode='reflect')[0]
    h,w = x.shape[-2:]
    out = p[:, oy:oy+h, ox:ox+w]
    return out.flip(-1) if flip else out

@settings(max_examples=30, deadline=None)
@given(st.integers(1, 6), st.integers(1, 5), st.integers(6, 12), st.integers(6, 12), st.integers(0, 2**31 - 1))
def test_pad_crop_flip_matches_reference(n, pad, h, w, seed):
    pad = min(pad, h - 1, w - 1)
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    offs = torch.randint(0, 2*pad + 1, (n, 2), generator=g)
    fl = torch.rand(n, generator=g) < 0.5
    out = pad_crop_flip(x, pad=pad, offsets=offs, flips=fl)
    assert out.dtype == torch.uint8 and out.shape == x.shape
    for i in range(n):
        ref = _slow_reference(x[i], int(offs[i, 0]), int(offs[i, 1]), bool(fl[i]), pad)
        assert torch.equal(out[i].float(), ref)

def test_pad_crop_flip_random_offsets_are_per_sample():
    "Random draws: each sample equals the reference at its own (recovered) offsets and flip."
    torch.manual_seed(0)
    x = torch.randint(0, 256, (64, 3, 16, 16), dtype=torch.uint8)
    g1,g2 = torch.Generator().manual_seed(5),torch.Generator().manual_seed(5)
    out = pad_crop_flip(x, pad=4, generator=g1)
    offs = torch.randint(0, 9, (64, 2), generator=g2); fl = torch.rand(64, generator=g2) < 0.5
    for i in range(64):
        assert torch.equal(out[i].float(), _slow_reference(x[i], int(offs[i, 0]), int(offs[i, 1]), bool(fl[i])))
    assert len({tuple(o) for o in offs.tolist()}) > 20  # offsets really differ between samples
    assert 10 < int(fl.sum()) < 54

def test_pad_crop_flip_seeded_and_types():
    x = TensorImage(torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8))
    set_seed(3); a = pad_crop_flip(x)
    set_seed(3); b = pad_crop_flip(x)
    set_seed(4); c = pad_crop_flip(x)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert isinstance(a, TensorImage)
    assert pad_crop_flip(x[0], offsets=torch.tensor([[4, 4]]), flip=False).shape == (3, 32, 32)
    assert torch.equal(pad_crop_flip(x, offsets=torch.full((8, 2), 4), flip=False), x)
    assert torch.equal(pad_crop_flip(x, offsets=torch.full((8, 2), 4), flips=torch.ones(8, dtype=torch.bool)), x.flip(-1))
    assert torch.equal(pad_crop_flip(x.float(), offsets=torch.zeros(8, 2, dtype=torch.long), flip=False),
                       F.pad(x.float(), (4,)*4, mode='reflect')[..., :32, :32])
    with pytest.raises(ValueError, match='smaller than the image'): pad_crop_flip(x[..., :4, :4], pad=4)

def test_normalize_roundtrip():
    x = TensorImage(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8))
    nm = CifarNormalize()
    y = nm(x)
    m,s = torch.tensor(CIFAR_STATS[0]).view(1, 3, 1, 1),torch.tensor(CIFAR_STATS[1]).view(1, 3, 1, 1)
    torch.testing.assert_close(y, (x.float()/255 - m)/s)
    torch.testing.assert_close(nm(TensorImage(x.float()/255)), y)
    torch.testing.assert_close(nm.decode(y), x.float()/255)


# ---------------------------------------------------------------- subsets
@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=1, max_size=80), st.data())
def test_balanced_subset(labels, d):
    y = torch.tensor(labels)
    n = d.draw(st.integers(1, len(labels)))
    i = balanced_subset(y, n, seed=d.draw(st.integers(0, 100)))
    assert len(i) == n and len(set(i.tolist())) == n and torch.equal(i, i.sort().values)
    counts,avail = torch.bincount(y[i], minlength=7),torch.bincount(y, minlength=7)
    # balanced: a class gets fewer than the maximum only when it has no images left
    short = counts < counts.max() - 1
    assert bool((counts[short] == avail[short]).all())


# ---------------------------------------------------------------- loaders
def test_folder_png_jpg_nested(tmp_path):
    f = write_folder(tmp_path/'cifar10', ['dog', 'cat', 'ship'])
    ds = cifar_tensors(path=f)
    assert ds.vocab == ['cat', 'dog', 'ship'] and ds.x.shape == (9, 3, 32, 32) and ds.x.dtype == torch.uint8
    img = np.array(Image.open(f/'train'/'ship'/'002.png'))
    files = sorted(p.relative_to(f).as_posix() for p in (f/'train').rglob('*.png'))
    i = files.index('train/ship/002.png')
    assert torch.equal(ds.x[i], torch.from_numpy(img).permute(2, 0, 1)) and ds.vocab[ds.y[i]] == 'ship'
    j = write_folder(tmp_path/'jpg', ['a', 'b'], ext='jpg')
    assert cifar_tensors(path=j, split='valid').x.shape == (6, 3, 32, 32)
    nst = write_folder(tmp_path/'cifar100', ['apple', 'bee', 'cloud'], nested=True)
    d = cifar_tensors('cifar100', path=nst)
    assert d.vocab == ['apple', 'bee', 'cloud'] and d.y.bincount().tolist() == [3, 3, 3]

def test_tgz_equals_folder_and_no_extraction_next_to_it(tmp_path):
    f = write_folder(tmp_path/'src'/'cifar10', ['dog', 'cat'])
    arc = write_tgz(f, tmp_path/'cifar10-png.tar.gz', arcname='cifar10')
    before = sorted(p.name for p in tmp_path.iterdir())
    for split in ('train', 'test'):
        a,b = cifar_tensors(path=f, split=split),cifar_tensors(path=arc, split=split)
        assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and a.vocab == b.vocab
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != 'cache') == before  # nothing unpacked here

def test_pickles10_folder_and_tgz(tmp_path):
    d,raw = write_pickles10(tmp_path/'r')
    arc = write_tgz(tmp_path/'r', tmp_path/'cifar-10-python.tar.gz')
    for src in (d, tmp_path/'r', arc):
        tr,te = cifar_tensors(path=src),cifar_tensors(path=src, split='test')
        assert len(tr) == 20 and len(te) == 4 and tr.c == 10 and tr.vocab[9] == 'truck'
        assert torch.equal(tr.x[4:8].reshape(4, 3072), torch.from_numpy(raw['data_batch_2'][0]))
        assert tr.y[4:8].tolist() == raw['data_batch_2'][1] and te.y.tolist() == raw['test_batch'][1]
        # row-major RGB planes: first 1024 values are the red channel
        assert torch.equal(te.x[0, 0].flatten(), torch.from_numpy(raw['test_batch'][0][0, :1024]))

def test_pickles100_folder_and_tgz(tmp_path):
    d,raw = write_pickles100(tmp_path/'r')
    arc = write_tgz(tmp_path/'r', tmp_path/'cifar-100-python.tar.gz')
    for src in (d, arc):
        te = cifar_tensors('cifar100', path=src, split='test')
        assert te.c == 100 and te.vocab[3] == 'c03' and te.y.tolist() == raw['test'][1]
        assert torch.equal(te.x.reshape(-1, 3072), torch.from_numpy(raw['test'][0]))

def test_cache_reuse_and_subset(tmp_path, monkeypatch):
    f = write_folder(tmp_path/'c', ['a', 'b', 'c'], n=6)
    full = cifar_tensors(path=f)
    assert len(list((tmp_path/'cache'/'tensors').glob('*.pt'))) == 1
    monkeypatch.setattr(data, '_decode_images', lambda *a, **k: pytest.fail("decoded again"))
    again = cifar_tensors(path=f)
    sub = cifar_tensors(path=f, n=7, seed=1)
    assert torch.equal(again.x, full.x) and torch.equal(sub.x, full.x[balanced_subset(full.y, 7, 1)])
    assert sorted(sub.y.bincount().tolist()) == [2, 2, 3]

def test_cache_invalidated_when_files_change(tmp_path):
    f = write_folder(tmp_path/'c', ['a', 'b'])
    assert len(cifar_tensors(path=f)) == 6
    Image.fromarray(_imgs(1, 9)[0]).save(f/'train'/'a'/'new.png')
    assert len(cifar_tensors(path=f)) == 7

def test_subset_decodes_only_chosen(tmp_path, monkeypatch):
    f = write_folder(tmp_path/'c', ['a', 'b'], n=10)
    seen = []
    orig = data._decode_images
    monkeypatch.setattr(data, '_decode_images', lambda blobs, names: seen.append(len(names)) or orig(blobs, names))
    ds = cifar_tensors(path=f, n=4, seed=0, cache=False)
    assert seen == [4] and ds.y.bincount().tolist() == [2, 2]

def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match='does not exist'): cifar_tensors(path=tmp_path/'missing')
    e = write_folder(tmp_path/'e', ['a', 'b']); (e/'train'/'zzz').mkdir()
    with pytest.raises(ValueError, match="without images.*zzz"): cifar_tensors(path=e)
    m = write_folder(tmp_path/'m', ['a', 'b']); Image.new('RGB', (30, 32)).save(m/'train'/'b'/'odd.png')
    with pytest.raises(ValueError, match='image sizes differ.*odd.png'): cifar_tensors(path=m)
    o = write_folder(tmp_path/'o', ['a'], splits=('train',))
    with pytest.raises(FileNotFoundError, match='no test images'): cifar_tensors(path=o)
    (tmp_path/'junk').mkdir()
    with pytest.raises(FileNotFoundError, match='neither an image folder'): cifar_tensors(path=tmp_path/'junk')
    with pytest.raises(ValueError, match='python release'): cifar_dls(path=write_pickles10(tmp_path/'p')[0], fast=False)


# ---------------------------------------------------------------- data location
def test_resolution_order(tmp_path, monkeypatch):
    env,fa = tmp_path/'env',tmp_path/'fastai'/'data'
    (fa/'cifar10').mkdir(parents=True); (fa/'cifar100').mkdir(parents=True)
    assert cifar_path('cifar10') == fa/'cifar10'             # no env var: fastai's data folder
    env.mkdir(); monkeypatch.setenv('OPENMIXUP_NB_DATA', str(env))
    assert cifar_path('cifar10') == fa/'cifar10'             # env folder without cifar10: still fastai
    (env/'cifar10-jpg.tar.gz').touch(); (env/'cifar100-jpg.tar.gz').touch()
    assert cifar_path('cifar10') == env/'cifar10-jpg.tar.gz'  # env wins; cifar10* does not match cifar100*
    assert cifar_path('cifar100') == env/'cifar100-jpg.tar.gz'
    (env/'cifar-10-batches-py').mkdir()
    assert cifar_path('cifar10') == env/'cifar-10-batches-py' # folders before archives
    (env/'cifar10').mkdir()
    assert cifar_path('cifar10') == env/'cifar10'
    assert cifar_path('cifar10', path=fa/'cifar100') == fa/'cifar100'  # explicit path wins
    env2 = tmp_path/'env2'; (env2/'cifar-100-python').mkdir(parents=True)
    monkeypatch.setenv('OPENMIXUP_NB_DATA', os.pathsep.join([str(tmp_path/'nothing'), str(env2)]))
    assert cifar_path('cifar100') == env2/'cifar-100-python'

def test_not_found_messages(tmp_path, monkeypatch):
    monkeypatch.setenv('OPENMIXUP_NB_DATA', str(tmp_path/'env'))
    with pytest.raises(FileNotFoundError) as e: cifar_path('cifar100')
    msg = str(e.value)
    assert str(tmp_path/'env') in msg and str(tmp_path/'fastai'/'data') in msg and 'download attempted' in msg
    with pytest.raises(FileNotFoundError, match='not found. Searched') as e: cifar_path('cifar10', download=False)
    assert 'download attempted' not in str(e.value)
    with pytest.raises(ValueError, match='Unknown dataset'): cifar_path('svhn')


# ---------------------------------------------------------------- DataLoaders
def test_dls_fast(tmp_path, monkeypatch):
    f = write_folder(tmp_path/'cifar10', ['cat', 'dog'], n=5)
    monkeypatch.setenv('OPENMIXUP_NB_DATA', str(tmp_path))
    dls = cifar_dls(bs=4, device='cpu')
    assert dls.c == 2 and dls.vocab == ['cat', 'dog'] and len(dls.train) == 2 and len(dls.valid) == 3
    x,y = dls.one_batch()
    assert isinstance(x, TensorImage) and isinstance(y, TensorCategory) and x.dtype == torch.float32
    set_seed(0); a = [b[0].clone() for b in dls.train]
    set_seed(0); b = [b[0] for b in dls.train]
    assert all(torch.equal(p, q) for p,q in zip(a, b))
    v = cifar_tensors(path=f, split='test')
    xv,yv = dls.valid.one_batch()
    torch.testing.assert_close(dls.valid.decode((xv,))[0], v.x[:4].float()/255)
    assert torch.equal(yv, v.y[:4])
    no_aug = cifar_dls(bs=10, device='cpu', pad=0, flip=False, drop_last=False)
    xt,yt = next(iter(no_aug.train.new(shuffle=False)))
    torch.testing.assert_close(no_aug.train.decode((xt,))[0], cifar_tensors(path=f).x.float()/255)

def test_dls_subsets_and_predict(tmp_path):
    d,_ = write_pickles10(tmp_path/'r', n=20)
    dls = cifar_dls(path=d, bs=10, n_train=50, n_valid=10, device='cpu')
    assert len(dls.train_ds) == 50 and dls.train_ds.y.bincount().tolist() == [5]*10
    assert len(dls.valid_ds) == 10
    from fastai.learner import Learner
    from fastai.callback.progress import ProgressCallback  # noqa: F401 (patches Learner.no_bar)
    learn = Learner(dls, torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3072, 10)))
    with learn.no_bar():
        p,t = learn.get_preds()
        lbl,i,probs = learn.predict(dls.valid_ds.x[0])
    assert p.shape == (10, 10) and lbl in dls.vocab and dls.vocab[int(i)] == lbl and probs.shape == (10,)
    assert len(dls.test_dl([dls.valid_ds.x[0]]*3).one_batch()[0]) == 3

def test_dls_per_item_same_images(tmp_path):
    f = write_folder(tmp_path/'src', ['cat', 'dog'], n=3)
    arc = write_tgz(f, tmp_path/'c.tgz')
    fast = cifar_dls(path=arc, bs=6, device='cpu')
    slow = cifar_dls(path=arc, bs=6, fast=False, device='cpu')
    assert slow.vocab == fast.vocab and len(slow.train_ds) == 6
    xs,ys = slow.valid.one_batch(); xf,yf = fast.valid.one_batch()
    assert xs.shape == xf.shape and sorted(ys.tolist()) == sorted(yf.tolist())
    key = lambda x: sorted(x.flatten(1).sum(1).tolist())
    assert np.allclose(key(xs), key(xf), atol=1e-2)  # same test images, same normalisation
    assert (tmp_path/'cache'/'extracted').is_dir()
