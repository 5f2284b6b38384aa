"""CUDA-only paths of data, training and the submission, each against the CPU; skipped without a GPU.
(The CUDA paths of `neurofc.fast` and `neurofc.bench`: the `#| gpu` cells of nbs/04a_fast and nbs/12_bench.)"""
import contextlib, io, sys, time, types

import numpy as np
import pytest
import torch

from neurofc.config import phase_config
from neurofc.core import get_device, seed_everything
from neurofc.data import DeviceBatcher, get_monkey, load_npz, session_path
from neurofc.fixtures import ALL_SWITCHES, quick_runs, synthetic_dir, tiny_config, tiny_data
from neurofc.submission import export_submission, load_model_file
from neurofc.config import build_model
from neurofc.runs import load_run
from neurofc.train import TrainStep, _fast_opt, _thermal_pause, fit, loss_weight

DEV = torch.device('cuda')
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a CUDA GPU')
# float32 on the GPU vs the CPU differs by rounding only (other kernels, other summation orders): float32 vs
# float64 on the CPU is ~3e-6 of each tensor's largest entry for these models, so 1e-4 leaves a 30x margin
RTOL = 1e-4
# cuDNN may run float32 RNNs (the GRU baseline) in TF32, as torch.backends.cudnn.allow_tf32 defaults to True:
# a 10-bit mantissa, 4.9e-4 a rounding
RTOL_GRU = 3e-3 if torch.backends.cudnn.allow_tf32 else RTOL


def _rel(a, b) -> float:
    "Largest |a - b| relative to b's largest entry, on the CPU."
    a, b = (torch.as_tensor(t).detach().cpu().double() for t in (a, b))
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


@pytest.fixture(scope='module')
def data():
    return tiny_data('beignet')


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
    "Tiny finished CPU runs by model: the paper and compete AMAG and the GRU baseline (cuDNN on a GPU)."
    models = ('paper', 'compete', 'gru')
    with contextlib.redirect_stdout(io.StringIO()):
        return dict(zip(models, quick_runs('beignet', tmp_path_factory.mktemp('gpu_runs'), models=models)))


def _trials(n: int = 12) -> np.ndarray:
    "Masked test trials of beignet's last day, raw units."
    return load_npz(session_path(synthetic_dir('beignet'), get_monkey('beignet').registered[-1], 'test'))[:n]


@needs_cuda
def test_get_device_and_seed():
    assert get_device('auto').type == DEV.type and get_device(DEV) == DEV
    if DEV.type == 'cuda':
        n = torch.cuda.device_count()
        with pytest.raises(RuntimeError, match=f'only {n} CUDA device'): get_device(f'cuda:{n}')
    seed_everything(3); a = torch.randn(5, device=DEV)
    seed_everything(3); assert torch.equal(torch.randn(5, device=DEV), a)      # the device's generator too


@needs_cuda
def test_device_batcher_matches_cpu(data):
    "One device-resident block on a GPU, normalised per trial's session: the CPU's batches."
    arrays, stats = data.train, data.stats
    assert len(arrays) > 1                                                     # several sessions in the block
    gpu = DeviceBatcher(arrays, 8, DEV, stats=stats, shuffle=False)
    cpu = DeviceBatcher(arrays, 8, 'cpu', stats=stats, shuffle=False)
    if DEV.type != 'cpu': assert len(gpu.parts) == 1 and gpu.parts[0].device.type == DEV.type
    assert len(gpu) == len(cpu)
    for g, c in zip(gpu, cpu, strict=True):
        assert g.x.device.type == DEV.type and g.session.device.type == DEV.type
        assert torch.equal(g.session.cpu(), c.session)
        for a, b in ((g.x, c.x), (g.y, c.y)):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-6, atol=1e-6)   # at most a rounding apart

    def epoch(b):
        "An epoch's (x, session) rows, sorted: the device's generator draws another order than the CPU's."
        rows = [torch.cat([t.x.flatten(1), t.session[:, None].to(t.x.dtype)], 1).cpu() for t in b]
        rows = torch.cat(rows).numpy()
        return rows[np.lexsort(rows[:, 7::-1].T)]                                # by the first 8 values
    gpu, cpu = (DeviceBatcher(arrays, 8, d, seed=1, stats=stats) for d in (DEV, 'cpu'))
    np.testing.assert_allclose(epoch(gpu), epoch(cpu), rtol=1e-6, atol=1e-6)   # each trial once, as the CPU
    state = gpu.state_dict()                                                    # the device generator's state
    first = [b.x.cpu() for b in gpu]
    gpu.load_state_dict(state)
    assert all(torch.equal(a, b.x.cpu()) for a, b in zip(first, gpu, strict=True))
    full = DeviceBatcher(arrays, 8, DEV, seed=1, stats=stats, drop_last=True)
    n = sum(len(v) for v in arrays.values())
    assert len(full) == n // 8 and all(len(b.x) == 8 for b in full)


@needs_cuda
@pytest.mark.parametrize('phase', ['paper', 'compete', 'all'])
def test_fit_on_cuda_with_amp(data, tmp_path, phase):
    "A tiny `fit` on the GPU under bf16 autocast (the default amp=True) finishes with finite metrics."
    cfg = tiny_config('compete', **ALL_SWITCHES) if phase == 'all' else tiny_config(phase)
    assert cfg.amp
    bench = torch.backends.cudnn.benchmark
    try:
        m = fit(cfg, data, tmp_path / 'run', seed=0, device=str(DEV), progress=False)
        if DEV.type == 'cuda': assert torch.backends.cudnn.benchmark               # fit turns autotuning on
    finally: torch.backends.cudnn.benchmark = bench
    assert m['epochs_run'] == 2 and all(np.isfinite(v) for v in m['val'].values()), m['val']
    assert all(np.isfinite(v) for r in m['val_by_member'].values() for v in r.values())
    assert m['environment']['device'] == str(DEV)
    if DEV.type == 'cuda': assert m['environment']['device_name'] == torch.cuda.get_device_name(DEV)
    ck = torch.load(tmp_path / 'run' / 'last.pt', map_location='cpu', weights_only=True)
    assert ('cuda_rng' in ck) == (DEV.type == 'cuda')                           # the CUDA generator's state


@needs_cuda
def test_fit_resume_on_cuda(data, tmp_path):
    "A GPU run interrupted after an epoch resumes from last.pt on the GPU (batcher's and CUDA's generators)."
    class Stop(Exception): pass
    def stop(epoch, row): raise Stop
    cfg = tiny_config('compete', **ALL_SWITCHES)
    with pytest.raises(Stop):
        fit(cfg, data, tmp_path / 'run', seed=0, device=str(DEV), progress=False, callback=stop)
    with contextlib.redirect_stdout(io.StringIO()) as out:
        m = fit(cfg, data, tmp_path / 'run', seed=0, device=str(DEV), resume=True, progress=False)
    assert 'Resuming run at epoch 1' in out.getvalue()
    assert m['epochs_run'] == 2 and np.isfinite(m['val']['total'])


def _step_setup(data, **kw):
    cfg = tiny_config('paper', **kw)    # fused Adaptor, no augmentation
    torch.manual_seed(0)
    model = build_model(cfg, data.n_channels, len(data.keys), 9, data)
    batch = next(iter(DeviceBatcher(data.train, 8, 'cpu', shuffle=False, stats=data.stats)))
    return cfg, model, batch


def _on(batch, dev):
    return type(batch)(*(t.to(dev) for t in (batch.x, batch.y, batch.session)))


def _loss_grads(step, batch):
    loss = step.loss(batch.x, batch.y, batch.session)
    return [loss, *torch.autograd.grad(loss, step.params)]


@needs_cuda
def test_train_step_matches_cpu(data):
    "float32 (amp=False): the GPU step's loss and every gradient equal the CPU's."
    cfg, model, batch = _step_setup(data, amp=False)
    cpu = TrainStep(cfg, model, torch.device('cpu'), loss_weight(cfg, data, 'cpu'))
    m = build_model(cfg, data.n_channels, len(data.keys), 9).to(DEV); m.load_state_dict(model.state_dict())
    gpu = TrainStep(cfg, m, DEV, loss_weight(cfg, data, DEV))
    assert not gpu.use_amp
    for a, b in zip(_loss_grads(gpu, _on(batch, DEV)), _loss_grads(cpu, batch), strict=True):
        assert _rel(a, b) < RTOL


@needs_cuda
def test_train_step_amp_keeps_float32(data):
    "bf16 autocast on the GPU: bf16 matmuls; float32 loss, parameters, gradients, EMA; close to float32's."
    cfg, model, batch = _step_setup(data, ema_decay=0.9)
    ref = TrainStep(cfg.replace(amp=False), model, torch.device('cpu'))
    ref_out = _loss_grads(ref, batch)
    m = build_model(cfg, data.n_channels, len(data.keys), 9).to(DEV); m.load_state_dict(model.state_dict())
    step = TrainStep(cfg, m, DEV)
    assert step.use_amp == (DEV.type == 'cuda')                                 # amp is for CUDA only
    dts = []
    hook = m.tr.head.register_forward_hook(lambda mod, i, o: dts.append(o.dtype))
    out = _loss_grads(step, _on(batch, DEV))
    # bf16 keeps 8 bits (3.9e-3 a rounding). Under the CPU's bf16 autocast this step's loss is within 3e-4 of
    # float32's and every gradient's cosine with float32's >= 0.9997; here 2e-2 and 0.95 (wrong ones: less)
    assert out[0].dtype == torch.float32 and _rel(out[0], ref_out[0]) < 2e-2
    cos = [torch.nn.functional.cosine_similarity(a.cpu().flatten(), b.flatten(), 0).item()
           for a, b in zip(out[1:], ref_out[1:])]
    assert min(cos) > 0.95, cos
    loss = step(_on(batch, DEV), cfg.lr)
    hook.remove()
    assert set(dts) == {torch.bfloat16 if step.use_amp else torch.float32} and torch.isfinite(loss)
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in step.params)
    assert all(p.dtype == torch.float32 and p.device.type == DEV.type for p in step.ema.model.parameters())
    assert all(torch.isfinite(p).all() for p in step.params)


@needs_cuda
def test_fused_optimizer_on_cuda(data):
    "The fused Adam kernel is chosen on the GPU and steps exactly as the foreach one from the same gradients."
    assert _fast_opt(DEV) == {'fused': True}
    cfg, model, batch = _step_setup(data)
    steps = []
    for fused in (True, False):
        m = build_model(cfg, data.n_channels, len(data.keys), 9).to(DEV)
        m.load_state_dict(model.state_dict())
        steps.append(TrainStep(cfg.replace(amp=False), m, DEV, fused=fused))
    assert steps[0].opt.defaults.get('fused') is True and steps[1].opt.defaults.get('foreach') is True
    b = _on(batch, DEV)
    steps[0].loss(b.x, b.y, b.session).backward()
    grads = [p.grad.clone() for p in steps[0].params]   # backward's layout (fused Adam mis-steps transposed)
    for _ in range(3):                                                           # same gradients, three steps
        for st in steps:
            for p, g in zip(st.params, grads): p.grad = g.clone()
            st.opt.step()
    # one formula, two kernels: the parameters agree to a few float32 roundings (1 ulp: 1.2e-7 relative)
    for a, b in zip(steps[0].params, steps[1].params): torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)


@needs_cuda
@pytest.mark.parametrize('norm', ['session', 'context'])
def test_forecaster_cuda_matches_cpu(runs, norm):
    "`load_run(..., device='cuda')` forecasts as on the CPU (AMAG both phases; the GRU through cuDNN)."
    x = _trials()
    for model, d in runs.items():
        cpu, gpu = load_run(d, 'cpu'), load_run(d, str(DEV))
        cpu.norm = gpu.norm = norm
        assert all(p.device.type == DEV.type for m in gpu.models for p in m.parameters())
        gpu.batch_size = 5                                                       # uneven device batches
        yc, yg = cpu.predict(x), gpu.predict(x)
        assert yg.dtype == np.float32 and yg.shape == yc.shape
        assert _rel(yg, yc) < (RTOL_GRU if model == 'gru' else RTOL), model   # `verify_submission`'s 1e-4
        np.testing.assert_array_equal(yg[:, :10], x[:, :10, :, 0])


@needs_cuda
@pytest.mark.parametrize('models', [('paper', 'compete'), ('gru',)])
def test_submission_model_on_cuda(runs, tmp_path, models):
    "The exported `Model(device='cuda')` (and its default device on a GPU machine) predicts as the CPU one."
    with pytest.warns(UserWarning, match=r"No runs for \['affi'\]"):
        export_submission({'beignet': [runs[m] for m in models]}, tmp_path / 'sub')
    tol = RTOL_GRU if 'gru' in models else RTOL
    gen = load_model_file(tmp_path / 'sub' / 'model.py')
    root = str(tmp_path / 'sub')
    assert gen.Model('beignet', root=root).device.type == ('cuda' if torch.cuda.is_available() else 'cpu')
    cpu = gen.Model('beignet', root=root, device='cpu').load()
    gpu = gen.Model('beignet', root=root, device=str(DEV), batch_size=5).load()
    assert all(p.device.type == DEV.type for f in gpu.forecasters for m in f.models for p in m.parameters())
    x = _trials()
    for xs in (x[:1], x):
        yc, yg = cpu.predict(xs), gpu.predict(xs)
        assert yg.dtype == np.float32 and yg.shape == (len(xs), 20, 89) and _rel(yg, yc) < tol
    assert gpu.predict(x[:0]).shape == (0, 20, 89)


def _nvml(temps):
    "A stand-in pynvml module whose GPU reports `temps` one reading after another (then the last forever)."
    temps = list(temps)
    def temperature(h, kind): return temps.pop(0) if len(temps) > 1 else temps[0]
    return types.SimpleNamespace(nvmlInit=lambda: None, nvmlDeviceGetHandleByIndex=lambda i: i,
                                 nvmlDeviceGetTemperature=temperature, NVML_TEMPERATURE_GPU=0)


# `_thermal_pause` only reads the device's type: these run on any machine
def test_thermal_pause_off_or_without_nvml(monkeypatch):
    slept = []
    monkeypatch.setattr(time, 'sleep', slept.append)
    cfg = phase_config('paper', 'beignet', quick=True)
    monkeypatch.setitem(sys.modules, 'pynvml', _nvml([99]))                     # a hot GPU ...
    _thermal_pause(cfg, torch.device('cuda'))                                   # ... but max_gpu_temp is None
    _thermal_pause(cfg.replace(max_gpu_temp=80.0), torch.device('cpu'))         # ... or the device is a CPU
    monkeypatch.setitem(sys.modules, 'pynvml', None)                            # pynvml missing
    _thermal_pause(cfg.replace(max_gpu_temp=80.0), torch.device('cuda'))
    assert slept == []


def test_thermal_pause_waits_while_hot(monkeypatch):
    slept = []
    monkeypatch.setattr(time, 'sleep', slept.append)
    monkeypatch.setitem(sys.modules, 'pynvml', _nvml([90, 85, 70]))
    _thermal_pause(phase_config('paper', 'beignet', quick=True, max_gpu_temp=80.0), torch.device('cuda:0'))
    assert slept == [5, 5]                                                       # hot twice, then cool


@needs_cuda
def test_thermal_pause_real_nvml():
    pytest.importorskip('pynvml')
    t = time.perf_counter()
    _thermal_pause(phase_config('paper', 'beignet', quick=True, max_gpu_temp=1000.0), DEV)   # never as hot
    assert time.perf_counter() - t < 5
