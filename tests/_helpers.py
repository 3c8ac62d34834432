"Helpers shared by the test suites: seeded generators, per-sample distinct batches, a loss probe for callbacks"
import pytest, torch
from fastai.callback.core import Callback
from openmixup_nb.callback import MixCallback, MixedLoss

def gen(seed): return torch.Generator().manual_seed(seed)

@pytest.fixture(autouse=True)
def _seed(): torch.manual_seed(0)

@pytest.fixture(autouse=True, scope='module')
def _one_thread():
    "One thread, for the suites that import it: they run on a small shared CPU"
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

def distinct(x):
    "Add a distinct per-sample offset, so every pixel of a sample differs from the same pixel of any other sample"
    off = 10. * torch.arange(len(x), dtype=torch.float32).view(-1, *[1]*(x.ndim-1))
    return (x.float().clamp(-3, 3) + off).to(x.dtype)

class Probe(Callback):
    "Per training batch: whether it was mixed, and the loss trained on against the mixed loss recomputed"
    order = 10
    def __init__(self): self.log = []
    def after_loss(self):
        if not self.training: return
        mcb = next(c for c in self.learn.cbs if isinstance(c, MixCallback))
        self.log.append((mcb.res is not None, isinstance(self.learn.loss_func, MixedLoss),
                         abs(self.learn.loss.item() - mcb.res.loss(self.learn.pred.detach(), mcb.old_lf).item())))

def warmed(net, shape=(2, 3, 32, 32)):
    "`net` after one training-mode forward on noise: BatchNorm statistics moved, so the analysis tools take it as trained"
    mode = net.training
    with torch.no_grad(): net.train()(torch.randn(shape))
    return net.train(mode)

def bad_input_tests(bad, # (call, error type, words the message must hold) per case
                    module, # the module whose public API the catalogue must cover
                    skip=(), # public names covered elsewhere
):
    "The two tests of a module's bad-input catalogue: each call fails as listed, and every public name has a case"
    @pytest.mark.parametrize('call, err, words', bad, ids=[f'{i}-{w[:24]}' for i, (_, _, w) in enumerate(bad)])
    def test_bad_inputs(call, err, words):
        with pytest.raises(err) as e: call()
        assert words in str(e.value)
    def test_catalogue_covers_the_api():
        src = ' '.join(str(c.__code__.co_names) for c, _, _ in bad)
        api = [n for n in module.__all__ if n not in skip]
        assert all(n in src for n in api), [n for n in api if n not in src]
    return test_bad_inputs, test_catalogue_covers_the_api
